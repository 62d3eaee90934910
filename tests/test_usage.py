"""ReportUsage against a real SQLite file: cost, idempotency, validation, durability."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aetcd
import grpc
import pytest
from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.etcd import write_changes
from modelroute.storage.usage_store import UsageStore
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from sqlalchemy import text

from tests.helpers import Running, ServerProcess


def report(report_id: str, **fields: object) -> router_pb2.UsageReport:
    base: dict[str, object] = {
        "report_id": report_id,
        "context": "rag.answer",
        "model_id": "gemini-3-flash-preview",
        "input_tokens": 1000,
        "output_tokens": 500,
        "latency_ms": 850,
        "outcome": types_pb2.OUTCOME_OK,
        "user": types_pb2.User(id="42", tier="premium"),
    }
    return router_pb2.UsageReport(**(base | fields))  # type: ignore[arg-type]


def rows(server: Running, where: str = "1=1") -> list[dict[str, object]]:
    assert server.server.engine is not None
    with server.server.engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM llm_usage_logs WHERE {where}"))
        return [dict(r._mapping) for r in result]


async def test_usage_row_has_cost_from_model_prices(server: Running) -> None:
    reply = await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=[report("r1")]))
    [result] = reply.results
    assert result.status == router_pb2.REPORT_STATUS_ACCEPTED
    # gemini-3-flash-preview: $0.5 / Mtok in, $3 / Mtok out.
    expected = (1000 * 0.5 + 500 * 3) / 1_000_000
    assert result.estimated_cost_usd == pytest.approx(expected)
    [row] = rows(server)
    assert row["estimated_cost"] == pytest.approx(expected)
    assert (row["context"], row["model_id"], row["provider"], row["outcome"]) == (
        "rag.answer",
        "gemini-3-flash-preview",
        "google",
        "OK",
    )
    assert (row["user_id"], row["tier"], row["input_tokens"], row["output_tokens"]) == (
        "42",
        "premium",
        1000,
        500,
    )


async def test_cost_uses_prices_in_force_at_report_time(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await write_changes(
        etcd,
        prefix,
        {"models/gemini-3-flash-preview": b'{"provider": "google", "input_usd_per_mtok": 10}'},
        0,
        [],
    )
    from tests.helpers import eventually

    async def repriced() -> None:
        snapshot = server.server.config.current
        assert snapshot is not None
        assert snapshot.models["gemini-3-flash-preview"].input_usd_per_mtok == 10

    await eventually(repriced)
    reply = await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=[report("r2")]))
    assert reply.results[0].estimated_cost_usd == pytest.approx(1000 * 10 / 1_000_000)


async def test_duplicate_report_id_is_stored_once(server: Running) -> None:
    first = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[report("dup"), report("dup", input_tokens=7)])
    )
    assert [r.status for r in first.results] == [
        router_pb2.REPORT_STATUS_ACCEPTED,
        router_pb2.REPORT_STATUS_DUPLICATE,
    ]
    retry = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[report("dup", input_tokens=9)])
    )
    assert retry.results[0].status == router_pb2.REPORT_STATUS_DUPLICATE
    [row] = rows(server, "report_id = 'dup'")
    assert row["input_tokens"] == 1000  # the first write wins; retries change nothing


async def test_invalid_reports_are_rejected_individually(server: Running) -> None:
    reply = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[
                report("ok-1"),
                report("neg", input_tokens=-5),
                report("no-outcome", outcome=types_pb2.OUTCOME_UNSPECIFIED),
                report(
                    "",
                ),
                report("bad-decision", decision_id="not-a-token"),
                report("huge-latency", latency_ms=10**12),
                report("long-tier", user=types_pb2.User(id="1", tier="t" * 65)),
            ]
        )
    )
    statuses = [(r.report_id, r.status) for r in reply.results]
    assert statuses[0] == ("ok-1", router_pb2.REPORT_STATUS_ACCEPTED)
    assert all(s == router_pb2.REPORT_STATUS_REJECTED for _, s in statuses[1:])
    errors = [r.error for r in reply.results[1:]]
    assert "input_tokens" in errors[0] and "outcome" in errors[1]
    assert "report_id" in errors[2] and "decision_id" in errors[3] and "latency_ms" in errors[4]
    assert "user.tier" in errors[5]
    assert [r["report_id"] for r in rows(server)] == ["ok-1"]


async def test_empty_or_oversized_batch_is_invalid_argument(server: Running) -> None:
    for reports in ([], [report(f"r{i}") for i in range(1001)]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rows(server) == []


async def test_decision_id_links_usage_to_the_experiment_variant(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await write_changes(
        etcd,
        prefix,
        {
            "experiments/e1": b'{"context":"rag.answer","enabled":true,'
            b'"variants":[{"id":"treat","model":"gpt-4o-mini","weight":100}]}'
        },
        0,
        [],
    )
    from tests.helpers import eventually

    async def decided() -> router_pb2.ResolveModelResponse:
        decision = await server.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="rag.answer", user=types_pb2.User(id="7"))
        )
        assert decision.variant_id == "treat"
        return decision

    decision = await eventually(decided)
    await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[report("linked", decision_id=decision.decision_id, model_id=decision.model_id)]
        )
    )
    [row] = rows(server)
    assert (row["experiment_id"], row["variant_id"], row["reason"]) == ("e1", "treat", "EXPERIMENT")


async def test_concurrent_reports_share_commits_and_all_land(server: Running) -> None:
    calls = [
        server.router.ReportUsage(
            router_pb2.ReportUsageRequest(reports=[report(f"c{i}-{j}") for j in range(10)])
        )
        for i in range(50)
    ]
    replies = await asyncio.gather(*calls)
    assert all(r.status == router_pb2.REPORT_STATUS_ACCEPTED for x in replies for r in x.results)
    assert len(rows(server)) == 500
    assert server.server.usage_writer is not None
    assert server.server.usage_writer.batches_committed < 50  # group commit happened


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    upgrade(url)
    engine = create_engine_for(url)
    with engine.connect() as connection:
        tables = {r[0] for r in connection.execute(text("SELECT name FROM sqlite_master"))}
    assert {"llm_usage_logs", "llm_feedback", "user_model_preferences", "alerts"} <= tables
    assert UsageStore(engine).count() == 0


@pytest.mark.slow
async def test_reports_acknowledged_before_sigterm_are_all_stored(
    tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int
) -> None:
    """A real server process under load gets SIGTERM: every report it acknowledged is in
    the database afterwards (the queue drains; in-flight calls finish)."""
    database = tmp_path / "usage.db"
    server = ServerProcess(
        [
            "--etcd-endpoints",
            etcd_endpoint,
            "--etcd-prefix",
            prefix,
            "--database-url",
            f"sqlite:///{database}",
            "--data-dir",
            str(tmp_path / "d"),
        ]
    )
    process, port = server.process, server.port
    try:
        acknowledged: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)

            async def sender(worker: int) -> None:
                for batch in range(1000):
                    ids = [f"w{worker}-b{batch}-{k}" for k in range(20)]
                    try:
                        reply = await stub.ReportUsage(
                            router_pb2.ReportUsageRequest(reports=[report(i) for i in ids]),
                            timeout=10,
                        )
                    except grpc.aio.AioRpcError:
                        return  # the server is going away; unacknowledged reports may be lost
                    acknowledged.extend(
                        r.report_id
                        for r in reply.results
                        if r.status == router_pb2.REPORT_STATUS_ACCEPTED
                    )
                    if worker == 0 and batch == 20:
                        process.send_signal(signal.SIGTERM)

            await asyncio.gather(*(sender(w) for w in range(8)))
        assert server.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert len(acknowledged) >= 20 * 20
    engine = create_engine_for(f"sqlite:///{database}")
    with engine.connect() as connection:
        stored = {r[0] for r in connection.execute(text("SELECT report_id FROM llm_usage_logs"))}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged reports missing"


async def test_full_queue_is_resource_exhausted_with_retry_info(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    from modelroute.server.api.errors import decode_details

    server = await start_server(usage_max_pending=150)
    batches = [
        router_pb2.ReportUsageRequest(reports=[report(f"q{b}-{i}") for i in range(100)])
        for b in range(6)
    ]
    outcomes = await asyncio.gather(
        *(server.router.ReportUsage(batch) for batch in batches), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert refused and accepted
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = decode_details(error)["RetryInfo"]
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0  # type: ignore[attr-defined]
    # Refused calls stored nothing; accepted calls stored everything.
    assert len(rows(server)) == 100 * len(accepted)
