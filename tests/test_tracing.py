"""Spans exported over OTLP/gRPC from a real server process to a real receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from modelroute.server.api.router_spans import hash_user
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import Receiver, attributes, eventually, otlp_exporting_server


@pytest.mark.slow
async def test_spans_reach_otlp_receiver_with_attributes_and_parent(
    receiver: tuple[Receiver, int], tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int
) -> None:
    collector, port = receiver
    server = await asyncio.to_thread(
        otlp_exporting_server,
        tmp_path,
        etcd_endpoint,
        prefix,
        port,
        {"OTEL_SERVICE_NAME": "modelroute-test"},
    )
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        traceparent = f"00-{trace_id}-{parent_id}-01"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)
            decision = await stub.ResolveModel(
                router_pb2.ResolveModelRequest(
                    context="rag.answer",
                    user=types_pb2.User(id="user-42", tier="premium"),
                    exclude_models=["gemini-3-flash-preview"],
                ),
                metadata=(("traceparent", traceparent),),
            )
            await stub.ReportUsage(
                router_pb2.ReportUsageRequest(
                    reports=[
                        router_pb2.UsageReport(
                            report_id="t1",
                            context="rag.answer",
                            model_id=decision.model_id,
                            input_tokens=12,
                            output_tokens=34,
                            latency_ms=5,
                            outcome=types_pb2.OUTCOME_OK,
                            decision_id=decision.decision_id,
                        )
                    ]
                ),
                metadata=(("traceparent", traceparent),),
            )
            # No caller trace: the decision span starts its own (ids made by the exporter).
            await stub.ResolveModel(
                router_pb2.ResolveModelRequest(
                    context="reranker", user=types_pb2.User(id="user-7"), request_id="req-9"
                )
            )
            # Several reports of one model in a call: one span, sums and counts.
            await stub.ReportUsage(
                router_pb2.ReportUsageRequest(
                    reports=[
                        router_pb2.UsageReport(
                            report_id=f"t{n}",
                            context="rag.answer",
                            model_id="gpt-4o",
                            input_tokens=10 * n,
                            output_tokens=n,
                            latency_ms=5,
                            outcome=types_pb2.OUTCOME_TIMEOUT if n == 2 else types_pb2.OUTCOME_OK,
                        )
                        for n in (2, 3)
                    ]
                )
            )

        def exported() -> tuple[Any, Any, Any]:
            resolves = collector.named("modelroute.resolve")
            usages = collector.named("usage gpt-4o-mini")
            reloads = collector.named("modelroute.config.reload")
            assert len(resolves) == 2 and len(usages) == 1 and reloads
            return resolves, usages[0], reloads[0]

        resolves, usage_span, reload_span = await eventually(exported, timeout=15)
        by_context = {attributes(span)["modelroute.context"]: span for span in resolves}
        resolve_span, root = by_context["rag.answer"], by_context["reranker"]
        assert root.trace_id.hex() not in (trace_id, "0" * 32) and not root.parent_span_id
        assert len(root.span_id) == 8 and root.span_id != resolve_span.span_id
        assert attributes(root)["modelroute.request_id"] == "req-9"
        assert attributes(root)["modelroute.user_hash"] == hash_user("user-7")
        assert "modelroute.request_id" not in attributes(resolve_span)
        assert resolve_span.trace_id.hex() == trace_id
        assert resolve_span.parent_span_id.hex() == parent_id
        attrs = attributes(resolve_span)
        assert attrs["modelroute.context"] == "rag.answer"
        assert attrs["modelroute.model_id"] == "gpt-4o-mini"
        assert attrs["modelroute.reason"] == "CONTEXT_DEFAULT"
        assert attrs["modelroute.config_revision"] == seed
        assert attrs["modelroute.fallback_cause"] == "EXCLUDED_BY_CALLER"
        assert attrs["modelroute.user_hash"] == hash_user("user-42")
        assert "user-42" not in str(attrs)  # the user id only hashed
        usage = attributes(usage_span)
        assert usage_span.trace_id.hex() == trace_id
        assert (usage["gen_ai.request.model"], usage["gen_ai.provider.name"]) == (
            "gpt-4o-mini",
            "openai",
        )
        assert (usage["gen_ai.usage.input_tokens"], usage["gen_ai.usage.output_tokens"]) == (12, 34)
        assert attributes(reload_span)["modelroute.config_revision"] == seed

        def grouped_span() -> Any:
            spans = collector.named("usage gpt-4o")
            assert len(spans) == 1
            return spans[0]

        grouped = await eventually(grouped_span, timeout=15)
        summed = attributes(grouped)
        assert (summed["gen_ai.usage.input_tokens"], summed["gen_ai.usage.output_tokens"]) == (
            50,
            5,
        )
        assert (summed["modelroute.reports"], summed["modelroute.errors"]) == (2, 1)
        assert summed["error.type"] == "TIMEOUT"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
