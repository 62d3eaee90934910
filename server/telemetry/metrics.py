"""OpenTelemetry metrics, exposed in Prometheus text format at `/metrics` (admin HTTP port).

Each replica owns its MeterProvider and Prometheus registry (not the process-wide globals):
tests run several replicas in one process and each must report only its own traffic.
Hot paths call one method (`record_decision`, `record_usage_write`); everything that is a
level rather than an event (quotas, budgets, queue depth, config revision, etcd) is an
observable instrument read at scrape time, so it costs nothing between scrapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from modelroute.v1 import types_pb2
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .decision_metrics import DecisionTally
from .semconv import GenAiMetrics, UsageFacts
from .tracing import otlp_metric_readers, spans_dropped

# Decisions take microseconds to a few ms (quota admission may touch etcd); writes, ms to s.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _LimitState(Protocol):
    # Read-only members, so frozen dataclasses (quotas.LimitState) satisfy the protocol.
    @property
    def subject(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def limit(self) -> float: ...
    @property
    def used(self) -> float: ...


class _Quotas(Protocol):
    def provider_states(self, now: datetime) -> Iterable[_LimitState]: ...
    def budget_states(self, now: datetime) -> Iterable[_LimitState]: ...


@dataclass
class Sources:
    """Where the observable instruments read from; each returns None while unknown."""

    quotas: _Quotas | None = None
    config_revision: Callable[[], int | None] = lambda: None
    rejected_total: Callable[[], int] = lambda: 0
    etcd_connected: Callable[[], bool | None] = lambda: None
    usage_queue_depth: Callable[[], int] = lambda: 0
    # Configured contexts: other names (callers may send anything) are counted as
    # `(unknown)`, so a label's values stay bounded by the config.
    contexts: Callable[[], Container[str]] = lambda: ()


def _enum_label(enum: Any, value: int, prefix: str) -> str:
    """`REASON_CONTEXT_DEFAULT` → `context_default`; values newer than this build → `unknown`."""
    name: str = enum.Name(value) if value in enum.values() else "UNKNOWN"
    return name.removeprefix(prefix).lower()


@functools.cache
def _reason(value: int) -> str:
    return _enum_label(types_pb2.Reason, value, "REASON_")


@functools.cache
def _cause(value: int) -> str:
    return _enum_label(types_pb2.FallbackCause, value, "FALLBACK_CAUSE_")


class MetricsRecorder:
    """What hot paths call. This base records nothing: components built without metrics
    (unit tests, tools) use `NO_METRICS`; the server wires in a `ServerMetrics`."""

    def record_decision(
        self, context: str, model_id: str, reason: int, fallback_cause: int | None, seconds: float
    ) -> None:
        pass

    def record_usage_write(self, rows: int, seconds: float) -> None:
        pass

    def record_usage_reports(self, reports: Iterable[UsageFacts]) -> None:
        """Stored usage reports (not duplicates): the GenAI client metrics."""


NO_METRICS = MetricsRecorder()


class ServerMetrics(MetricsRecorder):
    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources or Sources()
        self.registry = CollectorRegistry()
        self._reader = PrometheusMetricReader(registry=self.registry)
        self._provider = MeterProvider(
            # /metrics, and OTLP too when the OTEL_* variables ask for it: one pipeline.
            metric_readers=[self._reader, *otlp_metric_readers()],
            resource=Resource.create({"service.name": "modelroute"}),
            # Exemplars (a sampled trace id per bucket) cost about a sixth of every histogram
            # measurement (ingestion records three per report); /metrics shows none anyway.
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        meter = self._provider.get_meter("modelroute.server")
        self._genai = GenAiMetrics(meter)
        # Decisions are tallied outside the SDK (cheaper on the hot path), same exposition.
        self._decision_tally = DecisionTally(DECISION_BUCKETS)
        self.registry.register(self._decision_tally)
        self._write_latency = meter.create_histogram(
            "modelroute.usage.write.duration",
            unit="s",
            description="Usage batch commit time",
            explicit_bucket_boundaries_advisory=WRITE_BUCKETS,
        )
        self._written = meter.create_counter(
            "modelroute.usage.rows_written", unit="1", description="Usage rows committed"
        )
        meter.create_observable_gauge(
            "modelroute.provider.quota.utilization",
            [self._provider_utilisation],
            unit="1",
            description="Used / limit per provider limit (summed over replicas)",
        )
        meter.create_observable_gauge(
            "modelroute.context.budget.utilization",
            [self._budget_utilisation],
            unit="1",
            description="Spent / daily budget per context",
        )
        meter.create_observable_gauge(
            "modelroute.config.revision",
            [self._revision],
            unit="1",
            description="etcd revision of the config snapshot served",
        )
        meter.create_observable_counter(
            "modelroute.config.rejected",
            [self._rejected],
            unit="1",
            description="Config values rejected since start",
        )
        meter.create_observable_gauge(
            "modelroute.etcd.connected",
            [self._etcd],
            unit="1",
            description="1 while the config watch on etcd is live",
        )
        meter.create_observable_counter(
            "modelroute.spans.dropped",
            [self._spans_dropped],
            unit="1",
            description="Spans that could not be exported (queue full or collector refused)",
        )
        meter.create_observable_gauge(
            "modelroute.usage.queue_depth",
            [self._queue_depth],
            unit="1",
            description="Usage reports accepted but not yet committed",
        )

    # --- events (one call from the hot path) ----------------------------------------------

    def record_decision(
        self, context: str, model_id: str, reason: int, fallback_cause: int | None, seconds: float
    ) -> None:
        """One ResolveModel answer. Label values come from the config (bounded)."""
        if context not in self.sources.contexts():
            context = "(unknown)"
        self._decision_tally.record(
            context,
            model_id,
            _reason(reason),
            None if fallback_cause is None else _cause(fallback_cause),
            seconds,
        )

    def record_usage_reports(self, reports: Iterable[UsageFacts]) -> None:
        self._genai.record(reports)

    def record_usage_write(self, rows: int, seconds: float) -> None:
        self._written.add(rows)
        self._write_latency.record(seconds)

    # --- scrape ---------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (body, content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        self._provider.shutdown()

    # --- observable callbacks ---------------------------------------------------------------

    def _provider_utilisation(self, options: CallbackOptions) -> Iterable[Observation]:
        quotas = self.sources.quotas
        if quotas is None:
            return []
        return [
            Observation(s.used / s.limit, {"provider": s.subject, "limit": s.metric})
            for s in quotas.provider_states(datetime.now(UTC))
            if s.limit
        ]

    def _budget_utilisation(self, options: CallbackOptions) -> Iterable[Observation]:
        quotas = self.sources.quotas
        if quotas is None:
            return []
        return [
            Observation(s.used / s.limit, {"context": s.subject})
            for s in quotas.budget_states(datetime.now(UTC))
            if s.limit
        ]

    def _revision(self, options: CallbackOptions) -> Iterable[Observation]:
        revision = self.sources.config_revision()
        return [] if revision is None else [Observation(revision)]

    def _rejected(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.sources.rejected_total())]

    def _etcd(self, options: CallbackOptions) -> Iterable[Observation]:
        connected = self.sources.etcd_connected()
        return [] if connected is None else [Observation(1 if connected else 0)]

    def _spans_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(spans_dropped())]

    def _queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.sources.usage_queue_depth())]
