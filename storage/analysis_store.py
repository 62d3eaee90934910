"""Aggregations over `llm_usage_logs` and `llm_feedback`, in SQL on SQLite and PostgreSQL.

One pass per query: rows are grouped by (key, latency bucket, outcome) in SQL, so only a
histogram leaves the database (a few thousand rows per group, whatever the table size), and
totals, outcome counts, mean, variance and nearest-rank percentiles (the smallest latency
whose rank r satisfies r >= q * n) are folded from it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from modelroute.storage.database import database_call
from modelroute.storage.tables import LlmFeedback, LlmUsageLog, table_of
from sqlalchemy import Float, Table, and_, case, cast, distinct, func, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

_usage: Table = table_of(LlmUsageLog)
_feedback: Table = table_of(LlmFeedback)
GROUPS: Final = ("model", "context", "provider", "day")
PERCENTILES: Final = (50, 95, 99)


@dataclass
class UsageGroup:
    """Usage totals, outcome counts and latency percentiles of one group."""

    key: str
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_mean_ms: float = 0.0
    latency_var_ms2: float = 0.0  # population variance
    percentiles: dict[int, float] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    units: int = 0  # distinct users (experiments bucketed by user) or calls


@dataclass
class FeedbackGroup:
    """Feedback counts and quality-score statistics of one experiment variant."""

    key: str
    scores: int = 0
    score_mean: float = 0.0
    score_var: float = 0.0  # population variance
    thumbs: int = 0
    thumbs_up: int = 0


def _latency_bucket(latency: Any) -> ColumnElement[int]:
    """Latency histogram bucket: exact below 1 s, then 3 significant digits.

    10 ms below 10 s, 100 ms below 100 s, 1 s above: percentiles are exact for
    sub-second calls, within 1% above, and a group has at most a few thousand buckets.
    """
    return case(
        (latency < 1_000, latency),
        (latency < 10_000, (latency // 10) * 10),
        (latency < 100_000, (latency // 100) * 100),
        else_=(latency // 1_000) * 1_000,
    )


class _Accumulator:
    """Folds (bucket, outcome) rows of one group into a UsageGroup."""

    def __init__(self, group: UsageGroup) -> None:
        self.group = group
        self.buckets: dict[int, int] = defaultdict(int)
        self.latency_sum = 0.0
        self.latency_sq_sum = 0.0

    def add(
        self,
        bucket: int,
        outcome: str,
        count: int,
        input_tokens: Any,
        output_tokens: Any,
        cost: Any,
        latency_sum: Any,
        latency_sq_sum: Any,
    ) -> None:
        group = self.group
        group.calls += int(count)
        if outcome != "OK":
            group.errors += int(count)
        group.by_outcome[outcome] = group.by_outcome.get(outcome, 0) + int(count)
        group.input_tokens += int(input_tokens or 0)
        group.output_tokens += int(output_tokens or 0)
        group.cost_usd += float(cost or 0.0)
        self.latency_sum += float(latency_sum or 0.0)
        self.latency_sq_sum += float(latency_sq_sum or 0.0)
        self.buckets[bucket] += int(count)

    def finish(self, units: int | None) -> UsageGroup:
        group = self.group
        n = group.calls
        if n:
            group.latency_mean_ms = self.latency_sum / n
            group.latency_var_ms2 = max(0.0, self.latency_sq_sum / n - group.latency_mean_ms**2)
            ordered = sorted(self.buckets.items())
            for q in PERCENTILES:
                rank = math.ceil(q * n / 100)  # nearest rank
                seen = 0
                for value, count in ordered:
                    seen += count
                    if seen >= rank:
                        group.percentiles[q] = float(value)
                        break
        group.units = n if units is None else units
        return group


def _day(engine: Engine, column: Any) -> ColumnElement[str]:
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)  # SQLite keeps UTC as 'YYYY-MM-DD HH:MM:SS...'


class AnalysisStore:
    """Read-only aggregations over usage and feedback for summaries and experiments."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _key(self, group_by: str) -> ColumnElement[Any]:
        if group_by == "day":
            return _day(self.engine, _usage.c.created_at)
        columns = {
            "model": _usage.c.model_id,
            "context": _usage.c.context,
            "provider": _usage.c.provider,
            "variant": _usage.c.variant_id,
        }
        return columns[group_by]

    @database_call
    def usage(
        self,
        group_by: str,
        since: datetime | None,
        until: datetime | None,
        *,
        experiment_id: str | None = None,
        distinct_users: bool = False,
    ) -> list[UsageGroup]:
        """One group per key: totals, outcome counts and latency percentiles.

        One aggregation pass, grouped by (key, latency bucket, outcome).
        """
        key = self._key(group_by).label("key")
        conditions = []
        if since is not None:
            conditions.append(_usage.c.created_at >= since)
        if until is not None:
            conditions.append(_usage.c.created_at < until)
        if experiment_id is not None:
            conditions.append(_usage.c.experiment_id == experiment_id)
            conditions.append(_usage.c.variant_id.is_not(None))
        where = and_(true(), *conditions)
        latency = _usage.c.latency_ms
        as_float = cast(latency, Float)
        bucket = _latency_bucket(latency).label("bucket")
        histogram = (
            select(
                key,
                bucket,
                _usage.c.outcome,
                func.count(),
                func.sum(_usage.c.input_tokens),
                func.sum(_usage.c.output_tokens),
                func.sum(_usage.c.estimated_cost),
                func.sum(as_float),
                func.sum(as_float * as_float),
            )
            .where(where)
            .group_by(key, bucket, _usage.c.outcome)
        )
        accumulators: dict[str, _Accumulator] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(histogram):
                group_key = str(row[0])
                acc = accumulators.get(group_key)
                if acc is None:
                    acc = accumulators[group_key] = _Accumulator(UsageGroup(group_key))
                acc.add(int(row[1]), str(row[2]), *row[3:])
            units: dict[str, int] = {}
            if distinct_users:
                users = (
                    select(key, func.count(distinct(_usage.c.user_id))).where(where).group_by(key)
                )
                units = {str(k): int(n) for k, n in connection.execute(users)}
        groups = [acc.finish(units.get(k)) for k, acc in accumulators.items()]
        return sorted(groups, key=lambda g: g.key)

    @database_call
    def feedback_by_variant(
        self, experiment_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, FeedbackGroup]:
        """Feedback of an experiment per variant, within the optional time range."""
        conditions = [_feedback.c.experiment_id == experiment_id]
        if since is not None:
            conditions.append(_feedback.c.created_at >= since)
        if until is not None:
            conditions.append(_feedback.c.created_at < until)
        score = cast(_feedback.c.quality_score, Float)
        query = (
            select(
                _feedback.c.variant_id,
                func.count(_feedback.c.quality_score),
                func.avg(score),
                func.avg(score * score),
                func.count(_feedback.c.thumbs),
                func.sum(case((_feedback.c.thumbs == "UP", 1), else_=0)),
            )
            .where(and_(*conditions))
            .group_by(_feedback.c.variant_id)
        )
        found: dict[str, FeedbackGroup] = {}
        with self.engine.connect() as connection:
            for variant, scores, mean, mean_sq, thumbs, up in connection.execute(query):
                mean_f, mean_sq_f = float(mean or 0.0), float(mean_sq or 0.0)
                found[str(variant)] = FeedbackGroup(
                    key=str(variant),
                    scores=int(scores or 0),
                    score_mean=mean_f,
                    score_var=max(0.0, mean_sq_f - mean_f * mean_f),
                    thumbs=int(thumbs or 0),
                    thumbs_up=int(up or 0),
                )
        return found
