"""Decision counters and the decision-latency histogram, tallied in plain dicts.

ResolveModel is the hot path: an OpenTelemetry synchronous instrument costs several
microseconds per call (a measurement object, attribute hashing, exemplar sampling), about a
quarter of a decision's Python time. Here a decision is two dict updates and a bisect; the
tallies are turned into Prometheus families only when `/metrics` is scraped, with the same
names and labels the OpenTelemetry Prometheus exporter gives the other instruments.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

SCOPE_LABELS: Final = ("otel_scope_name", "otel_scope_schema_url", "otel_scope_version")
SCOPE_VALUES: Final = ("modelroute.server", "", "")


class DecisionTally(Collector):
    """Counts per (context, model, reason), fallbacks per (context, cause), and a latency
    histogram per context. Label values are the caller's (already bounded) strings."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(buckets)
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._fallbacks: dict[tuple[str, str], int] = {}
        # Per context: one count per bucket (the last is +Inf), and the sum of seconds.
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = {}

    def record(
        self, context: str, model: str, reason: str, cause: str | None, seconds: float
    ) -> None:
        key = (context, model, reason)
        self._decisions[key] = self._decisions.get(key, 0) + 1
        if cause is not None:
            fallback = (context, cause)
            self._fallbacks[fallback] = self._fallbacks.get(fallback, 0) + 1
        counts = self._latency.get(context)
        if counts is None:
            counts = self._latency[context] = [0] * (len(self._bounds) + 1)
            self._latency_sum[context] = 0.0
        counts[bisect_left(self._bounds, seconds)] += 1
        self._latency_sum[context] += seconds

    def decisions(self) -> int:
        return sum(dict(self._decisions).values())

    def collect(self) -> Iterator[Metric]:
        # dict(...) copies in one C call: a scrape from another thread sees a consistent map.
        decisions = CounterMetricFamily(
            "modelroute_decisions",
            "Model decisions (ResolveModel answers)",
            labels=("context", "model", "reason", *SCOPE_LABELS),
        )
        for (context, model, reason), count in dict(self._decisions).items():
            decisions.add_metric((context, model, reason, *SCOPE_VALUES), count)
        yield decisions
        latency = HistogramMetricFamily(
            "modelroute_decision_duration_seconds",
            "Time to decide a model, quota admission included",
            labels=("context", *SCOPE_LABELS),
        )
        sums = dict(self._latency_sum)
        for context, counts in dict(self._latency).items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), list(counts), strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric((context, *SCOPE_VALUES), buckets, sums.get(context, 0.0))
        yield latency
        fallbacks = CounterMetricFamily(
            "modelroute_fallbacks",
            "Decisions that served a fallback",
            labels=("context", "cause", *SCOPE_LABELS),
        )
        for (context, cause), count in dict(self._fallbacks).items():
            fallbacks.add_metric((context, cause, *SCOPE_VALUES), count)
        yield fallbacks
