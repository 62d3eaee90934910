"""The OpenTelemetry semantic conventions modelroute emits beyond its own `modelroute.*`
names, in one place so spans, metrics and OFREP agree:

- GenAI client metrics from usage reports (semconv gen-ai-metrics, v1.37+ names):
  `gen_ai.client.token.usage` ({token}) and `gen_ai.client.operation.duration` (s), with
  `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
  `gen_ai.token.type` (token usage) and `error.type` (when the call failed);
- feature-flag attributes on decision spans (semconv registry `feature_flag.*`): a model
  decision is an OpenFeature evaluation whose flag key is the context.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from opentelemetry.metrics import Meter

PROVIDER_NAME: Final = "modelroute"
# modelroute reason → OpenFeature resolution reason (README "OpenFeature" has the table).
OPENFEATURE_REASONS: Final[Mapping[str, str]] = {
    "ENV_OVERRIDE": "STATIC",  # pinned in the server's environment
    "OPERATOR_OVERRIDE": "STATIC",  # pinned by an operator
    "USER_PREFERENCE": "TARGETING_MATCH",  # this user's own choice
    "EXPERIMENT": "SPLIT",  # pseudorandom bucket of an experiment
    "ROLLOUT": "SPLIT",  # pseudorandom bucket of a rollout
    "CONTEXT_DEFAULT": "STATIC",  # the context's configured model
    "GLOBAL_DEFAULT": "DEFAULT",  # unknown context: settings.default_model
}
# Advisory bucket boundaries from the GenAI metric conventions.
TOKEN_BUCKETS: Final = tuple(4**n for n in range(14))  # 1 … 67,108,864
DURATION_BUCKETS: Final = tuple(0.01 * 2**n for n in range(14))  # 0.01 … 81.92 s
OPERATION_NAME: Final = "chat"  # reports do not say; chat completions are the common case


def openfeature_reason(reason_name: str) -> str:
    return OPENFEATURE_REASONS.get(reason_name, "UNKNOWN")


def feature_flag_attributes(
    context: str, model_id: str, reason_name: str, variant_id: str, config_revision: int
) -> dict[str, str]:
    """A decision as an OpenFeature evaluation (no user id: spans carry it only hashed)."""
    return {
        "feature_flag.key": context,
        "feature_flag.provider.name": PROVIDER_NAME,
        "feature_flag.result.variant": variant_id or reason_name,
        "feature_flag.result.reason": openfeature_reason(reason_name).lower(),
        "feature_flag.result.value": model_id,
        "feature_flag.version": str(config_revision),
    }


class UsageFacts(Protocol):
    """What a stored usage report tells (storage's UsageRecord has these fields)."""

    @property
    def provider(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def latency_ms(self) -> int: ...


class GenAiMetrics:
    """The two GenAI client histograms, on the replica's meter (so they reach /metrics and
    the OTLP exporter like every other modelroute metric)."""

    def __init__(self, meter: Meter) -> None:
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def record(self, reports: Iterable[UsageFacts]) -> None:
        duration, tokens = self._duration.record, self._tokens.record
        for report in reports:
            per_call, inputs, outputs = _genai_attributes(
                report.provider, report.model_id, report.outcome
            )
            duration(report.latency_ms / 1000.0, per_call)
            tokens(report.input_tokens, inputs)
            tokens(report.output_tokens, outputs)


@functools.lru_cache(maxsize=1024)
def _genai_attributes(
    provider: str, model_id: str, outcome: str
) -> tuple[Mapping[str, str], Mapping[str, str], Mapping[str, str]]:
    """The attribute sets of one report's three measurements (duration; input and output
    tokens), built once per (provider, model, outcome): ingestion records three per report.
    Shared between calls: never modified."""
    attributes = {
        "gen_ai.operation.name": OPERATION_NAME,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model_id,
    }
    if outcome != "OK":
        attributes["error.type"] = outcome.lower()
    return (
        attributes,
        attributes | {"gen_ai.token.type": "input"},
        attributes | {"gen_ai.token.type": "output"},
    )
