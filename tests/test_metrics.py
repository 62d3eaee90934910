"""`/metrics` on the admin port: Prometheus text that moves with real traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from modelroute.v1 import router_pb2, types_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Running, eventually


@pytest.fixture
async def http_server(seed: int, start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server(admin_port=0)


async def scrape(server: Running) -> dict[tuple[str, frozenset], float]:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"http://127.0.0.1:{server.server.admin_port}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def test_decision_counter_moves_by_the_number_of_calls(http_server: Running) -> None:
    before = await scrape(http_server)
    calls = 25
    await asyncio.gather(
        *(
            http_server.router.ResolveModel(router_pb2.ResolveModelRequest(context="rag.answer"))
            for _ in range(calls)
        )
    )
    await http_server.router.ResolveModel(router_pb2.ResolveModelRequest(context="no.such.ctx"))
    after = await scrape(http_server)
    labels = {"context": "rag.answer", "model": "gemini-3-flash-preview"}
    delta = value(after, "modelroute_decisions_total", **labels) - value(
        before, "modelroute_decisions_total", **labels
    )
    assert delta == calls
    assert value(after, "modelroute_decisions_total", reason="context_default") >= calls
    # Callers' arbitrary context names do not become label values.
    assert value(after, "modelroute_decisions_total", context="(unknown)") == 1
    assert not any("no.such.ctx" in str(labels) for _, labels in after)
    assert value(after, "modelroute_decision_duration_seconds_count", context="rag.answer") >= calls


async def test_fallbacks_writes_and_levels_are_exported(http_server: Running) -> None:
    report = router_pb2.UsageReport(
        report_id="q1",
        context="rag.answer",
        model_id="gemini-3-flash-preview",
        input_tokens=100,
        output_tokens=50,
        outcome=types_pb2.OUTCOME_QUOTA_EXCEEDED,
    )
    await http_server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=[report]))

    async def fell_back() -> None:
        reply = await http_server.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="rag.answer")
        )
        assert reply.fallback.cause == types_pb2.FALLBACK_CAUSE_COOLDOWN

    await eventually(fell_back)
    samples = await scrape(http_server)
    assert value(samples, "modelroute_fallbacks_total", cause="cooldown") >= 1
    assert value(samples, "modelroute_usage_rows_written_total") >= 1
    assert value(samples, "modelroute_usage_write_duration_seconds_count") >= 1
    assert value(samples, "modelroute_etcd_connected") == 1
    current = http_server.server.config.current
    assert current is not None
    revision = current.revision
    assert value(samples, "modelroute_config_revision") == revision
    assert value(samples, "modelroute_usage_queue_depth") == 0
    assert any(n == "modelroute_provider_quota_utilization" for n, _ in samples)
    assert any(n == "modelroute_context_budget_utilization" for n, _ in samples)
