"""What the rollout controller reads from the database: per rollout and arm, since the
rollout started, the figures its guardrails compare.

The one place that reads usage for rollouts, so that it can switch to the usage rollup
tables (per context x model x arm over a window) without touching the controller: it
returns `ArmStats`, never rows. One aggregation pass for all rollouts at once, grouped by
(rollout, arm, latency bucket, outcome) with the same latency buckets as the analysis
store, so only a histogram leaves the database, and one pass over feedback.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from modelroute.server.core.rollout_spec import CANDIDATE_ARM
from modelroute.storage.database import database_call
from modelroute.storage.tables import LlmFeedback, LlmUsageLog
from sqlalchemy import Float, Table, and_, case, cast, func, or_, select, text
from sqlalchemy.engine import Engine

_usage: Table = LlmUsageLog.__table__  # type: ignore[attr-defined]
_feedback: Table = LlmFeedback.__table__  # type: ignore[attr-defined]


# Written as a literal, not a bound parameter: only then can SQLite (and PostgreSQL, for
# generic plans) prove that the partial index `... WHERE reason = 'ROLLOUT'` applies.
ROLLOUT_ROWS: Final = text("llm_usage_logs.reason = 'ROLLOUT'")


@dataclass
class ArmStats:
    """One arm of one rollout since it started."""

    calls: int = 0
    errors: int = 0
    cost_sum: float = 0.0
    cost_sq_sum: float = 0.0
    latency_histogram: dict[int, int] = field(default_factory=dict)  # bucket -> calls
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


def latency_bucket(latency_ms: int) -> int:
    """The analysis store's latency buckets (exact below 1 s, then 3 significant digits),
    applied here so that the database groups by the raw, indexed latency."""
    if latency_ms < 1_000:
        return latency_ms
    if latency_ms < 10_000:
        return latency_ms // 10 * 10
    if latency_ms < 100_000:
        return latency_ms // 100 * 100
    return latency_ms // 1_000 * 1_000


class RolloutMetricsReader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @database_call
    def read(self, windows: Mapping[str, RolloutWindow]) -> RolloutArms:
        """Raises StoreUnavailableError when the database fails."""
        found: RolloutArms = {rid: defaultdict(ArmStats) for rid in windows}
        if not windows:
            return {}
        rollout = _usage.c.experiment_id
        # Grouped in the order of the partial covering index `ix_llm_usage_logs_rollout_arms`
        # (migration 0004): the database walks it without a sort or a table access. The
        # per-rollout time window is a filter on the index entries.
        usage_where = or_(
            *(
                and_(rollout == w.rollout_id, _usage.c.created_at >= w.since)
                for w in windows.values()
            )
        )
        cost = cast(_usage.c.estimated_cost, Float)
        histogram = (
            select(
                rollout,
                _usage.c.variant_id,
                _usage.c.outcome,
                _usage.c.latency_ms,
                func.count(),
                func.sum(cost),
                func.sum(cost * cost),
            )
            .where(and_(ROLLOUT_ROWS, rollout.in_(list(windows)), usage_where))
            .group_by(rollout, _usage.c.variant_id, _usage.c.outcome, _usage.c.latency_ms)
        )
        # Candidate calls in the current step: a second, narrow walk of the same index.
        step_where = or_(
            *(
                and_(rollout == w.rollout_id, _usage.c.created_at >= w.step_since)
                for w in windows.values()
            )
        )
        step_calls = (
            select(rollout, func.count())
            .where(
                and_(
                    ROLLOUT_ROWS,
                    rollout.in_(list(windows)),
                    _usage.c.variant_id == CANDIDATE_ARM,
                    step_where,
                )
            )
            .group_by(rollout)
        )
        feedback_where = or_(
            *(
                and_(_feedback.c.experiment_id == w.rollout_id, _feedback.c.created_at >= w.since)
                for w in windows.values()
            )
        )
        score = cast(_feedback.c.quality_score, Float)
        feedback = (
            select(
                _feedback.c.experiment_id,
                _feedback.c.variant_id,
                func.count(_feedback.c.quality_score),
                func.sum(score),
                func.sum(score * score),
                func.count(_feedback.c.thumbs),
                func.sum(case((_feedback.c.thumbs == "UP", 1), else_=0)),
            )
            .where(feedback_where)
            .group_by(_feedback.c.experiment_id, _feedback.c.variant_id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(histogram)
            for rid, arm, outcome, latency, count, cost_sum, cost_sq in rows:
                stats = found[str(rid)][str(arm)]
                stats.calls += int(count)
                if outcome != "OK":
                    stats.errors += int(count)
                stats.cost_sum += float(cost_sum or 0.0)
                stats.cost_sq_sum += float(cost_sq or 0.0)
                bucket = latency_bucket(int(latency))
                histogram_counts = stats.latency_histogram
                histogram_counts[bucket] = histogram_counts.get(bucket, 0) + int(count)
            for rid, count in connection.execute(step_calls):
                found[str(rid)][CANDIDATE_ARM].calls_since_step = int(count)
            for rid, arm, scores, total, squares, thumbs, up in connection.execute(feedback):
                if arm is None:
                    continue
                stats = found[str(rid)][str(arm)]
                stats.quality_n = int(scores or 0)
                stats.quality_sum = float(total or 0.0)
                stats.quality_sq_sum = float(squares or 0.0)
                stats.thumbs = int(thumbs or 0)
                stats.thumbs_up = int(up or 0)
        return {rid: dict(arms) for rid, arms in found.items()}
