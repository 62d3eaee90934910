"""OpenTelemetry GenAI client metrics from ReportUsage (at /metrics and at a real OTLP
receiver), and OpenFeature `feature_flag.*` attributes on decision spans."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Receiver, Running, attributes, eventually, otlp_exporting_server


def report(report_id: str, model: str, outcome: int, tokens: tuple[int, int], latency: int):  # type: ignore[no-untyped-def]
    return router_pb2.UsageReport(
        report_id=report_id,
        context="rag.answer",
        model_id=model,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        latency_ms=latency,
        outcome=outcome,  # type: ignore[arg-type]
        retry_after=duration_pb2.Duration(seconds=1),
    )


REPORTS = [
    report("g1", "gemini-3-flash-preview", types_pb2.OUTCOME_OK, (100, 20), 1500),
    report("g2", "gemini-3-flash-preview", types_pb2.OUTCOME_OK, (300, 40), 500),
    report("o1", "gpt-4o-mini", types_pb2.OUTCOME_RATE_LIMITED, (50, 0), 80),
]


def samples(text: str, name: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(name):
                found.append((sample.name, dict(sample.labels), float(sample.value)))
    return found


def one(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    values = [v for n, lab, v in found if n == name and labels.items() <= lab.items()]
    assert len(values) == 1, (name, labels, found)
    return values[0]


async def test_token_usage_and_duration_at_metrics_endpoint(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    running = await start_server(admin_port=0)
    reply = await running.router.ReportUsage(router_pb2.ReportUsageRequest(reports=REPORTS))
    assert {r.status for r in reply.results} == {router_pb2.REPORT_STATUS_ACCEPTED}
    # A retried report is a duplicate: stored once, counted once.
    await running.router.ReportUsage(router_pb2.ReportUsageRequest(reports=REPORTS[:1]))
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{running.server.admin_port}/metrics")).text
    tokens = samples(text, "gen_ai_client_token_usage")
    google = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "google",
        "gen_ai_request_model": "gemini-3-flash-preview",
    }
    assert one(tokens, "gen_ai_client_token_usage_sum", **google, gen_ai_token_type="input") == 400
    assert one(tokens, "gen_ai_client_token_usage_sum", **google, gen_ai_token_type="output") == 60
    assert one(tokens, "gen_ai_client_token_usage_count", **google, gen_ai_token_type="input") == 2
    assert not [
        lab
        for _, lab, _ in tokens
        if lab.get("gen_ai_provider_name") == "google" and lab.get("error_type")
    ]
    failed = {"gen_ai_provider_name": "openai", "error_type": "rate_limited"}
    assert one(tokens, "gen_ai_client_token_usage_sum", **failed, gen_ai_token_type="input") == 50
    durations = samples(text, "gen_ai_client_operation_duration")
    assert one(durations, "gen_ai_client_operation_duration_seconds_sum", **google) == 2.0
    assert one(durations, "gen_ai_client_operation_duration_seconds_count", **failed) == 1
    # The advisory buckets of the conventions: 1.5 s and 0.5 s fall under le=2.56, not 0.32.
    assert (
        one(durations, "gen_ai_client_operation_duration_seconds_bucket", **google, le="2.56") == 2
    )
    assert (
        one(durations, "gen_ai_client_operation_duration_seconds_bucket", **google, le="0.32") == 0
    )


@pytest.mark.slow
async def test_metrics_and_flag_attributes_reach_an_otlp_receiver(
    receiver: tuple[Receiver, int], tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int
) -> None:
    collector, port = receiver
    server = await asyncio.to_thread(
        otlp_exporting_server,
        tmp_path,
        etcd_endpoint,
        prefix,
        port,
        {"OTEL_METRIC_EXPORT_INTERVAL": "200"},
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)
            await stub.ResolveModel(
                router_pb2.ResolveModelRequest(
                    context="rag.answer", user=types_pb2.User(id="user-42", tier="free")
                )
            )
            await stub.ReportUsage(router_pb2.ReportUsageRequest(reports=REPORTS))

        def exported() -> tuple[Any, Any, Any]:
            resolves = [s for s in collector.spans if s.name == "modelroute.resolve"]
            by_name = {m.name: m for m in collector.metrics}
            assert resolves and "gen_ai.client.token.usage" in by_name
            assert "gen_ai.client.operation.duration" in by_name
            return (
                resolves[0],
                by_name["gen_ai.client.token.usage"],
                by_name["gen_ai.client.operation.duration"],
            )

        span, tokens, duration = await eventually(exported, timeout=15)
        flag = attributes(span)
        assert flag["feature_flag.key"] == "rag.answer"
        assert flag["feature_flag.provider.name"] == "modelroute"
        assert flag["feature_flag.result.variant"] == "CONTEXT_DEFAULT"
        assert flag["feature_flag.result.reason"] == "static"
        assert flag["feature_flag.result.value"] == "gemini-3-flash-preview"
        assert "user-42" not in str(flag)
        assert (tokens.unit, duration.unit) == ("{token}", "s")
        points = [(attributes(p), p.sum, p.count) for p in tokens.histogram.data_points]
        google_input = [
            (total, count)
            for attrs, total, count in points
            if attrs.get("gen_ai.provider.name") == "google"
            and attrs.get("gen_ai.token.type") == "input"
            and attrs.get("gen_ai.operation.name") == "chat"
            and attrs.get("gen_ai.request.model") == "gemini-3-flash-preview"
        ]
        assert google_input and google_input[-1] == (400, 2)
        assert any(
            attrs.get("error.type") == "rate_limited"
            for attrs, _, _ in [(attributes(p), 0, 0) for p in duration.histogram.data_points]
        )
    finally:
        assert await asyncio.to_thread(server.stop) == 0
