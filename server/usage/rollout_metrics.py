"""What the rollout controller reads from the database: per rollout and arm, since the
rollout started, the figures its guardrails compare.

Read from the usage rollups (`storage/analysis_store`, the store `storage/arm_stats` reads
too), so a check costs what a rollout's rollup rows cost, not what its raw rows cost: a
rollout's decisions carry experiment_id = rollout id and variant_id = candidate / baseline,
so each arm is the rollup rows of (rollout id, arm) over [start, now), all models of the
arm together. Whole hours, days and weeks come from the rollups and only the minutes
between the rollout's (or the step's) start and the next whole hour from the raw rows
(`storage/rollup_window`).

Latency is the rollups' histogram: each bucket stands for its midpoint and is within
`rollups.LATENCY_RELATIVE_ERROR` (2%) of the latencies it holds, so the p95 guardrail's
threshold and exceedance counts are read at that resolution, both arms alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.rollups import bucket_value
from modelroute.storage.usage_groups import FeedbackGroup, UsageAccumulator

from ..core.rollout_spec import CANDIDATE_ARM


@dataclass
class ArmStats:
    """One arm of one rollout since it started."""

    calls: int = 0
    errors: int = 0
    cost_sum: float = 0.0
    cost_sq_sum: float = 0.0
    latency_histogram: dict[float, int] = field(default_factory=dict)  # latency ms -> calls
    calls_since_step: int = 0
    quality_n: int = 0
    quality_sum: float = 0.0
    quality_sq_sum: float = 0.0
    thumbs: int = 0
    thumbs_up: int = 0

    def latency_quantile(self, q: float) -> float:
        """Nearest-rank quantile of the latency histogram (0 without calls)."""
        total = sum(self.latency_histogram.values())
        if not total:
            return 0.0
        rank, seen = max(1, math.ceil(q * total)), 0
        for value, count in sorted(self.latency_histogram.items()):
            seen += count
            if seen >= rank:
                return float(value)
        return float(max(self.latency_histogram))

    def calls_slower_than(self, threshold_ms: float) -> int:
        return sum(c for v, c in self.latency_histogram.items() if v > threshold_ms)


@dataclass(frozen=True, slots=True)
class RolloutWindow:
    """Which rows belong to a rollout: since it started; `step_since` counts the step."""

    rollout_id: str
    since: datetime
    step_since: datetime


RolloutArms = dict[str, dict[str, ArmStats]]  # rollout id -> arm -> stats


def arm_from(usage: UsageAccumulator | None, feedback: FeedbackGroup | None) -> ArmStats:
    """One arm's figures from its usage accumulator and feedback totals."""
    stats = ArmStats()
    if usage is not None:
        stats.calls = usage.group.calls
        stats.errors = usage.group.errors
        stats.cost_sum = usage.group.cost_usd
        stats.cost_sq_sum = usage.cost_sq_sum
        stats.latency_histogram = {bucket_value(b): n for b, n in usage.buckets.items() if n}
    if feedback is not None:
        stats.quality_n = feedback.scores
        # FeedbackGroup keeps mean and population variance; the sums are what tests need.
        stats.quality_sum = feedback.score_mean * feedback.scores
        stats.quality_sq_sum = (feedback.score_var + feedback.score_mean**2) * feedback.scores
        stats.thumbs = feedback.thumbs
        stats.thumbs_up = feedback.thumbs_up
    return stats


class RolloutMetricsReader:
    def __init__(self, store: AnalysisStore) -> None:
        self.store = store

    def read(self, windows: Mapping[str, RolloutWindow]) -> RolloutArms:
        """Every rollout's arms over its window. Raises StoreUnavailableError when the
        database fails."""
        return {rid: self.read_one(window) for rid, window in windows.items()}

    def read_one(self, window: RolloutWindow) -> dict[str, ArmStats]:
        rollout = {"experiment_id": window.rollout_id}
        usage = self.store.usage_by(("variant",), window.since, None, rollout)
        feedback = self.store.feedback_by(("variant",), window.since, None, rollout)
        arms = {
            key[0]: arm_from(usage.get(key), feedback.get(key))
            for key in set(usage) | set(feedback)
            if key[0]
        }
        candidate = arms.get(CANDIDATE_ARM)
        if candidate is None:
            return arms
        if window.step_since <= window.since:
            candidate.calls_since_step = candidate.calls
        else:
            step = self.store.usage_by(
                ("variant",),
                window.step_since,
                None,
                {**rollout, "variant_id": CANDIDATE_ARM},
                latency=False,
            )
            found = step.get((CANDIDATE_ARM,))
            candidate.calls_since_step = found.group.calls if found else 0
        return arms
