"""Python SDK report delivery: `close()` always returns, delivers what it can and says
what it could not; reports the server rejects are visible to the caller (real servers)."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest
from modelroute.client import (
    AsyncModelRouter,
    ControlPlaneUnavailableWarning,
    ModelRouter,
    RejectedReport,
    ReportRejectedWarning,
)
from sqlalchemy import text

from tests.helpers import Running

# A hang fails the test through this bound; a healthy run needs a small fraction of it.
PROCESS_BOUND_SECONDS = 90
ROUNDS = 30

APP = textwrap.dedent(
    """
    import asyncio, sys
    from modelroute.client import AsyncModelRouter

    class RateLimited(Exception):
        status_code = 429
        # A 1 ms cooldown: the next round finds the model available again.
        headers = {"retry-after-ms": "1"}

    async def main(address: str, rounds: int) -> None:
        for _ in range(rounds):
            calls = []

            async def llm(model: str) -> str:
                calls.append(model)
                if len(calls) == 1:
                    raise RateLimited("Too Many Requests")
                return model

            # The 429 report wakes the sender just as the block exits: the race that
            # left the sender task "cancelling" forever.
            async with AsyncModelRouter(address, close_timeout=5) as router:
                await router.call_with_fallback("rag.answer", llm)
        print("all rounds closed", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.slow
async def test_exiting_right_after_a_429_never_hangs_and_delivers_every_report(
    server: Running,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        APP,
        server.address,
        str(ROUNDS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), PROCESS_BOUND_SECONDS)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(
            f"the SDK process did not exit within {PROCESS_BOUND_SECONDS}s:\n{output.decode()}"
        )
    assert process.returncode == 0, output.decode()
    assert "all rounds closed" in output.decode()
    # Each round's two reports (the 429 and the success) were delivered before close returned.
    assert server.server.engine is not None
    with server.server.engine.connect() as connection:
        outcomes = connection.execute(
            text("SELECT outcome, count(*) FROM llm_usage_logs GROUP BY outcome")
        ).all()
    assert dict(outcomes) == {"RATE_LIMITED": ROUNDS, "OK": ROUNDS}


async def test_close_returns_within_close_timeout_when_the_server_never_answers() -> None:
    """A peer that accepts connections and never speaks: close() must still return, and
    say which reports it could not deliver."""
    silent: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    black_hole = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    try:
        router = AsyncModelRouter(f"127.0.0.1:{port}", close_timeout=0.5, watch=False)
        report_id = router.report("rag.answer", "gpt-4o-mini", input_tokens=10)
        with pytest.warns(ControlPlaneUnavailableWarning, match="1 usage reports lost"):
            result = await router.close()
        assert result.undelivered == (report_id,)
        assert not result.complete
        assert await router.close() is result  # closing twice is harmless
    finally:
        for writer in silent:
            writer.close()
        black_hole.close()


async def test_a_rejected_report_is_returned_counted_and_warned_about(server: Running) -> None:
    seen: list[RejectedReport] = []
    router = AsyncModelRouter(server.address, report_interval=60, on_rejected=seen.append)
    good = router.report("rag.answer", "gpt-4o-mini", input_tokens=10)
    bad = router.report("rag.answer", "gpt-4o-mini", input_tokens=-1)
    with pytest.warns(ReportRejectedWarning, match="input_tokens"):
        rejected = await router.flush()
    assert [(r.report_id, r.error.split(":")[0]) for r in rejected] == [(bad, "input_tokens")]
    assert seen == rejected
    assert router.rejected_reports == 1 and router.rejections == rejected
    result = await router.close()
    assert (result.delivered, result.rejected, result.complete) == (1, 1, True)
    assert server.server.engine is not None
    with server.server.engine.connect() as connection:
        stored = connection.execute(text("SELECT report_id FROM llm_usage_logs")).scalars().all()
    assert stored == [good]


async def test_the_sync_router_shows_rejections_in_the_callers_thread(server: Running) -> None:
    def app() -> tuple[list[RejectedReport], int, object]:
        router = ModelRouter(server.address, report_interval=60)
        router.report("reranker", "gpt-4o-mini", output_tokens=-5)
        with pytest.warns(ReportRejectedWarning, match="output_tokens"):
            rejected = router.flush()
        return rejected, router.rejected_reports, router.close()

    rejected, count, closed = await asyncio.to_thread(app)
    assert [r.error.split(":")[0] for r in rejected] == ["output_tokens"]
    assert count == 1
    assert getattr(closed, "complete", None) is True
