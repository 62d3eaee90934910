"""Span export from the exporter child process: nothing lost silently.

A span either reaches the collector or is counted as dropped — in the server's metrics, in
`modelroute config status`, and in a log line once per interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from modelroute.server.telemetry.export import OffloadingSpanProcessor
from modelroute.v1 import router_pb2, router_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from tests.helpers import Receiver, ServerProcess, eventually

pytestmark = pytest.mark.slow


def exporter_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        **extra,
    }


async def test_every_span_reaches_the_collector_through_the_exporter_process(
    receiver: tuple[Receiver, int],
) -> None:
    collector, port = receiver
    processor = OffloadingSpanProcessor({"service.name": "t"}, env=exporter_env(port))
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        for index in range(1000):
            with tracer.start_as_current_span(f"s{index % 3}") as span:
                span.set_attribute("index", index)
        assert await asyncio.to_thread(processor.force_flush, 30_000)
        assert len(collector.spans) == 1000
        assert sorted(a.value.int_value for s in collector.spans for a in s.attributes) == list(
            range(1000)
        )
        assert processor.dropped == 0
    finally:
        await asyncio.to_thread(provider.shutdown)


async def test_a_full_queue_counts_and_logs_the_dropped_spans(
    receiver: tuple[Receiver, int], caplog: pytest.LogCaptureFixture
) -> None:
    collector, port = receiver
    # Room for 5 spans, and no timed export: the 6th span onwards finds the queue full.
    env = exporter_env(port, OTEL_BSP_MAX_QUEUE_SIZE="5", OTEL_BSP_SCHEDULE_DELAY="600000")
    processor = OffloadingSpanProcessor({"service.name": "t"}, env=env, log_interval=0.05)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    caplog.set_level(logging.WARNING, logger="modelroute.telemetry")
    try:
        for _ in range(20):
            tracer.start_span("s").end()
        assert processor.dropped == 15

        def logged() -> None:
            assert any("15 spans dropped" in r.getMessage() for r in caplog.records)

        await eventually(logged, timeout=10)
        assert await asyncio.to_thread(processor.force_flush, 30_000)
        assert len(collector.spans) == 5  # what was queued is exported, not lost
    finally:
        await asyncio.to_thread(provider.shutdown)


async def test_server_shows_dropped_spans_in_metrics_and_config_status(
    receiver: tuple[Receiver, int], tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int
) -> None:
    _, port = receiver
    env = exporter_env(port, OTEL_BSP_MAX_QUEUE_SIZE="1", OTEL_BSP_SCHEDULE_DELAY="600000")
    server = await asyncio.to_thread(
        ServerProcess,
        [
            "--etcd-endpoints",
            etcd_endpoint,
            "--etcd-prefix",
            prefix,
            "--database-url",
            f"sqlite:///{tmp_path / 'u.db'}",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)
            for _ in range(10):
                await stub.ResolveModel(router_pb2.ResolveModelRequest(context="rag.answer"))
        status = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "modelroute.server.cli",
                "config",
                "status",
                "--server",
                f"127.0.0.1:{server.port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        shown = json.loads(status.stdout)
        # One queue slot: at most one span (the config reload's or a decision's) queued.
        assert int(shown["spans_dropped"]) >= 9, status.stdout
        admin_port = next(
            int(match.group(1))
            for line in server.output
            if (match := re.search(r"dashboard at http://[\d.]+:(\d+)/", line))
        )
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics").read()
        )
        dropped = [
            float(line.split()[-1])
            for line in metrics.decode().splitlines()
            if line.startswith("modelroute_spans_dropped_total")
        ]
        assert dropped and dropped[0] >= 9
    finally:
        assert await asyncio.to_thread(server.stop) == 0
