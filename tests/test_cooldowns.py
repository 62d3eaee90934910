"""Cooldowns from provider errors, shared by replicas through leased etcd keys."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from google.protobuf import duration_pb2
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Running, eventually


def quota_report(report_id: str, seconds: float, **fields: object) -> router_pb2.UsageReport:
    retry = duration_pb2.Duration()
    retry.FromMilliseconds(int(seconds * 1000))
    base: dict[str, object] = {
        "report_id": report_id,
        "context": "rag.answer",
        "model_id": "gemini-3-flash-preview",
        "outcome": types_pb2.OUTCOME_QUOTA_EXCEEDED,
        "retry_after": retry,
    }
    return router_pb2.UsageReport(**(base | fields))  # type: ignore[arg-type]


RAG = router_pb2.ResolveModelRequest(context="rag.answer")


async def test_quota_report_on_one_replica_moves_traffic_on_another(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    replica_a, replica_b = await start_server(), await start_server()
    assert (await replica_b.router.ResolveModel(RAG)).model_id == "gemini-3-flash-preview"

    started = time.monotonic()
    await replica_a.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[quota_report("q1", seconds=2)])
    )

    async def cooled() -> router_pb2.ResolveModelResponse:
        response = await replica_b.router.ResolveModel(RAG)
        assert response.model_id == "gpt-4o-mini"
        return response

    # Seen well before the 2 s cooldown ends (speed is measured by benchmarks, not here).
    response = await eventually(cooled, timeout=1.5)
    assert response.fallback.cause == types_pb2.FALLBACK_CAUSE_COOLDOWN
    assert response.fallback.from_model_id == "gemini-3-flash-preview"
    assert response.cache_ttl.ToTimedelta().total_seconds() <= 2  # re-ask when it ends

    # A replica started now (think: restarted) honours the cooldown already in etcd.
    replica_c = await start_server()
    assert (await replica_c.router.ResolveModel(RAG)).model_id == "gpt-4o-mini"

    async def recovered() -> None:
        response = await replica_b.router.ResolveModel(RAG)
        assert (response.model_id, response.fallback.cause) == (
            "gemini-3-flash-preview",
            types_pb2.FALLBACK_CAUSE_UNSPECIFIED,
        )

    await eventually(recovered, timeout=6)
    assert time.monotonic() - started >= 2  # not before retry_after


async def test_provider_wide_cooldown_skips_every_model_of_the_provider(server: Running) -> None:
    await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[quota_report("q2", seconds=30, model_id="gpt-4o", provider_wide=True)]
        )
    )
    premium = router_pb2.ResolveModelRequest(context="premium.answer")

    async def openai_skipped() -> None:
        response = await server.router.ResolveModel(premium)
        # Chain: gemini-3-pro-preview, gpt-4o, claude-3-sonnet, gpt-4o-mini (both openai).
        assert response.model_id == "gemini-3-pro-preview"
        assert list(response.fallback_model_ids) == ["claude-3-sonnet"]

    await eventually(openai_skipped)


async def test_duplicate_report_does_not_extend_a_cooldown(server: Running) -> None:
    first = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[quota_report("q3", seconds=1)])
    )
    assert first.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED

    async def cooled() -> None:
        assert (await server.router.ResolveModel(RAG)).model_id == "gpt-4o-mini"

    await eventually(cooled)
    retry = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[quota_report("q3", seconds=600)])
    )
    assert retry.results[0].status == router_pb2.REPORT_STATUS_DUPLICATE

    async def recovered() -> None:
        assert (await server.router.ResolveModel(RAG)).model_id == "gemini-3-flash-preview"

    await eventually(recovered, timeout=5)


async def test_operator_lists_and_clears_a_cooldown(
    server: Running, etcd_endpoint: str, prefix: str
) -> None:
    import json

    from tests.helpers import run_cli

    await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(reports=[quota_report("q4", seconds=300)])
    )
    listed = await run_cli("cooldown", "list", etcd=etcd_endpoint, prefix=prefix)
    entry = json.loads(listed.stdout)["models/gemini-3-flash-preview"]
    assert entry["reason"] == "QUOTA_EXCEEDED"
    cleared = await run_cli(
        "cooldown", "clear", "gemini-3-flash-preview", etcd=etcd_endpoint, prefix=prefix
    )
    assert cleared.returncode == 0, cleared.stderr

    async def recovered() -> None:
        assert (await server.router.ResolveModel(RAG)).model_id == "gemini-3-flash-preview"

    await eventually(recovered)
    again = await run_cli(
        "cooldown", "clear", "gemini-3-flash-preview", etcd=etcd_endpoint, prefix=prefix
    )
    assert again.returncode == 1 and "no active cooldown" in again.stderr
