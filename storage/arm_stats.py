"""Per-arm health over a time window, from the rollups: what a rollout controller compares.

An arm is (context, model, experiment, variant); calls outside any experiment or rollout
have experiment_id = variant_id = "". Cost follows the window's rollup buckets, not its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .analysis_store import AnalysisStore

ARM_KEYS = ("context", "model", "experiment", "variant")


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Calls, errors, tokens and cost of one arm over a window."""

    context: str
    model_id: str
    experiment_id: str  # "" = not in an experiment / rollout
    variant_id: str
    calls: int
    errors: int  # every outcome other than OK
    calls_by_outcome: dict[str, int]
    latency_p50_ms: float  # within rollups.LATENCY_RELATIVE_ERROR of the true value
    latency_p95_ms: float
    latency_p99_ms: float
    latency_mean_ms: float  # exact
    input_tokens: int
    output_tokens: int
    cost_usd: float
    feedbacks: int
    quality_scores: int
    quality_mean: float | None  # None without any quality score
    thumbs: int
    thumbs_up: int

    @property
    def error_rate(self) -> float:
        """Errors per call (0 without calls)."""
        return self.errors / self.calls if self.calls else 0.0

    @property
    def cost_per_call_usd(self) -> float:
        """Estimated cost per call in USD (0 without calls)."""
        return self.cost_usd / self.calls if self.calls else 0.0


def arm_stats(
    store: AnalysisStore,
    since: datetime | None,
    until: datetime | None,
    *,
    context: str | None = None,
    experiment_id: str | None = None,
) -> list[ArmStats]:
    """Every arm with calls or feedback in [since, until) (None = open end), optionally only
    one context and/or one experiment, sorted by (context, model, experiment, variant).
    """
    filters = {k: v for k, v in (("context", context), ("experiment_id", experiment_id)) if v}
    usage = store.usage_by(ARM_KEYS, since, until, filters)
    feedback = store.feedback_by(ARM_KEYS, since, until, filters)
    arms = []
    for key in sorted(set(usage) | set(feedback)):
        accumulator = usage.get(key)
        group = accumulator.finish(None) if accumulator else None
        fb = feedback.get(key)
        arms.append(
            ArmStats(
                context=key[0],
                model_id=key[1],
                experiment_id=key[2],
                variant_id=key[3],
                calls=group.calls if group else 0,
                errors=group.errors if group else 0,
                calls_by_outcome=dict(group.by_outcome) if group else {},
                latency_p50_ms=group.percentiles.get(50, 0.0) if group else 0.0,
                latency_p95_ms=group.percentiles.get(95, 0.0) if group else 0.0,
                latency_p99_ms=group.percentiles.get(99, 0.0) if group else 0.0,
                latency_mean_ms=group.latency_mean_ms if group else 0.0,
                input_tokens=group.input_tokens if group else 0,
                output_tokens=group.output_tokens if group else 0,
                cost_usd=group.cost_usd if group else 0.0,
                feedbacks=fb.feedbacks if fb else 0,
                quality_scores=fb.scores if fb else 0,
                quality_mean=fb.score_mean if fb and fb.scores else None,
                thumbs=fb.thumbs if fb else 0,
                thumbs_up=fb.thumbs_up if fb else 0,
            )
        )
    return arms
