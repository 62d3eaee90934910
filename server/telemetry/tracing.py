"""OpenTelemetry setup from the standard `OTEL_*` environment variables.

Spans are exported over OTLP/gRPC when an OTLP endpoint is configured
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), or when
`OTEL_TRACES_EXPORTER=otlp` asks for the default endpoint; encoding and sending happen in an
exporter child process (`export.py`). `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn export off (decision spans are then not built at all: nothing would read them).
Metrics follow the same rules with OTEL_METRICS_EXPORTER / ..._METRICS_ENDPOINT
(`otlp_metric_readers`, added to the replica's MeterProvider next to /metrics).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from . import decision_spans
from .export import OffloadingSpanProcessor

log = logging.getLogger("modelroute.telemetry")
_provider: TracerProvider | None = None
_offloader: OffloadingSpanProcessor | None = None


def export_wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def metrics_export_wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_METRICS_EXPORTER", "").lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def otlp_metric_readers(env: Mapping[str, str] | None = None) -> list[MetricReader]:
    """An OTLP/gRPC metric reader when the OTEL_* variables ask for export (interval:
    OTEL_METRIC_EXPORT_INTERVAL, default 60 s), else none: /metrics alone."""
    if not metrics_export_wanted(os.environ if env is None else env):
        return []
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return [PeriodicExportingMetricReader(OTLPMetricExporter())]


def configure_tracing(env: Mapping[str, str] | None = None) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return it."""
    global _provider
    if _provider is not None:
        return _provider
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "modelroute")})
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, default on
    if export_wanted(env):
        global _offloader
        # Encoding and sending happen in a child process (export.py says why).
        _offloader = OffloadingSpanProcessor(dict(resource.attributes), env=env)
        provider.add_span_processor(_offloader)
        log.info("exporting spans over OTLP/gRPC (from an exporter process)")
        default_sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
        if default_sampler == "parentbased_always_on":
            decision_spans.use_direct_export(_offloader.offer)
    else:
        decision_spans.use_direct_export(None, skip=True)  # no processor reads spans
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()  # flushes pending spans


def spans_dropped() -> int:
    """Spans that could not be exported since start (0 when export is off)."""
    return _offloader.dropped if _offloader is not None else 0
