"""Usage and feedback summaries, read from the rollups (see `rollups`, `rollup_window`).

A summary costs what its window has in rollup buckets (days, hours, keys, latency buckets),
not what it has in rows: totals, outcome counts and latency sums come from `usage_rollups`,
percentiles from the latency histogram (`usage_latency_rollups`, each within
`LATENCY_RELATIVE_ERROR` of the nearest-rank latency), and only the minutes at the ends of a
window that are not whole hours come from the raw rows, folded the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from modelroute.storage.database import database_call
from modelroute.storage.rollup_window import Window, plan
from modelroute.storage.rollups import (
    DAY,
    WEEK,
    bucket_case_sql,
    bucket_value,
    experiment_users,
    feedback_rollups,
    latency_rollups,
    usage_rollups,
)
from modelroute.storage.tables import LlmFeedback, LlmUsageLog, table_of
from sqlalchemy import (
    Float,
    Table,
    and_,
    case,
    cast,
    distinct,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

_usage: Table = table_of(LlmUsageLog)
_feedback: Table = table_of(LlmFeedback)
GROUPS: Final = ("model", "context", "provider", "day")
PERCENTILES: Final = (50, 95, 99)
# group_by -> column name in every table ("day" is derived from the time).
_COLUMNS: Final = {
    "model": "model_id",
    "context": "context",
    "provider": "provider",
    "variant": "variant_id",
    "experiment": "experiment_id",
}


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
    feedbacks: int = 0


class UsageAccumulator:
    """Folds rollup (or raw) rows of one group into a UsageGroup."""

    def __init__(self, key: str) -> None:
        self.group = UsageGroup(key)
        self.buckets: dict[int, int] = {}
        self.latency_sum = 0
        self.latency_sq_sum = 0.0
        self.cost_sq_sum = 0.0  # for the cost variance (rollout guardrails)

    def add(
        self,
        outcome: str,
        calls: Any,
        tokens_in: Any,
        tokens_out: Any,
        cost: Any,
        latency_sum: Any,
        latency_sq_sum: Any,
        cost_sq_sum: Any = 0.0,
    ) -> None:
        """Add one (group, outcome) aggregate row to the group's totals."""
        group, calls = self.group, int(calls)
        group.calls += calls
        if outcome != "OK":
            group.errors += calls
        group.by_outcome[outcome] = group.by_outcome.get(outcome, 0) + calls
        group.input_tokens += int(tokens_in or 0)
        group.output_tokens += int(tokens_out or 0)
        group.cost_usd += float(cost or 0.0)
        self.latency_sum += int(latency_sum or 0)
        self.latency_sq_sum += float(latency_sq_sum or 0.0)
        self.cost_sq_sum += float(cost_sq_sum or 0.0)

    def add_bucket(self, bucket: int, calls: Any) -> None:
        """Add the calls of one latency bucket (for percentiles)."""
        self.buckets[bucket] = self.buckets.get(bucket, 0) + int(calls)

    def finish(self, units: int | None) -> UsageGroup:
        """The group's totals, with latency percentiles and `units` distinct units."""
        group, n = self.group, self.group.calls
        if n:
            group.latency_mean_ms = self.latency_sum / n
            group.latency_var_ms2 = max(0.0, self.latency_sq_sum / n - group.latency_mean_ms**2)
            ordered = sorted(self.buckets.items())
            for q in PERCENTILES:
                rank, seen = math.ceil(q * n / 100), 0  # nearest rank
                for bucket, count in ordered:
                    seen += count
                    if seen >= rank:
                        group.percentiles[q] = bucket_value(bucket)
                        break
        group.units = n if units is None else units
        return group


def day_label(day_number: int) -> str:
    """'YYYY-MM-DD' of a day counted from 1970-01-01 (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day_number)).strftime("%Y-%m-%d")


def _rollup_range(table: Table, window: Window) -> ColumnElement[bool]:
    clauses = []
    for period, start, end in window.rollups:
        parts = [table.c.period_seconds == period]
        if start is not None:
            parts.append(table.c.bucket_start >= start)
        if end is not None:
            parts.append(table.c.bucket_start < end)
        clauses.append(and_(*parts))
    return or_(false(), *clauses)


def _rollup_keys(table: Table, keys: Sequence[str]) -> list[ColumnElement[Any]]:
    return [
        (table.c.bucket_start // DAY if key == "day" else table.c[_COLUMNS[key]]).label(key)
        for key in keys
    ]


def _raw_keys(table: Table, keys: Sequence[str], start: datetime) -> list[ColumnElement[Any]]:
    # A raw segment lies within one hour, so within one day: its day is a constant.
    day = (int(start.timestamp() // 1)) // DAY
    return [
        (literal(day) if key == "day" else func.coalesce(table.c[_COLUMNS[key]], "")).label(key)
        for key in keys
    ]


def _key_of(row: Sequence[Any], keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(
        day_label(int(value)) if key == "day" else str(value)
        for key, value in zip(keys, row, strict=False)
    )


class AnalysisStore:
    """Read-only aggregations over usage and feedback for summaries and experiments."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
        """One group per key: totals, outcome counts and latency percentiles."""
        filters = {"experiment_id": experiment_id} if experiment_id is not None else {}
        accumulators = self.usage_by((group_by,), since, until, filters)
        units: dict[str, int] = {}
        if distinct_users and experiment_id is not None:
            units = self._experiment_users(experiment_id, since, until)
        groups = [
            acc.finish(units.get(k[0], 0) if distinct_users else None)
            for k, acc in accumulators.items()
        ]
        return sorted(groups, key=lambda g: g.key)

    @database_call
    def usage_by(
        self,
        keys: Sequence[str],
        since: datetime | None,
        until: datetime | None,
        filters: dict[str, str] | None = None,
        *,
        latency: bool = True,
    ) -> dict[tuple[str, ...], UsageAccumulator]:
        """Accumulators per key tuple (keys from model, context, provider, variant,
        experiment, day); `filters` are equalities on those columns. Rows of an experiment
        without a variant are left out when filtering on an experiment. `latency=False`
        skips the histogram rollups (totals only: no percentiles).
        """
        window = plan(since, until, DAY if "day" in keys else WEEK)
        accumulators: dict[tuple[str, ...], UsageAccumulator] = {}

        def acc(key: tuple[str, ...]) -> UsageAccumulator:
            found = accumulators.get(key)
            if found is None:
                found = accumulators[key] = UsageAccumulator(
                    key[0] if len(key) == 1 else "/".join(key)
                )
            return found

        filters = dict(filters or {})
        with self.engine.connect() as connection:
            if window.rollups:
                self._rollup_usage(connection, keys, window, filters, acc, latency)
            for start, end in window.raw:
                self._raw_usage(connection, keys, start, end, filters, acc)
        return accumulators

    def _conditions(self, table: Table, filters: dict[str, str], raw: bool) -> list[Any]:
        conditions: list[Any] = []
        for column, value in filters.items():
            conditions.append(table.c[column] == value)
            if column == "experiment_id":
                conditions.append(
                    table.c.variant_id.is_not(None) if raw else table.c.variant_id != ""
                )
        return conditions

    def _rollup_usage(
        self,
        connection: Connection,
        keys: Sequence[str],
        window: Window,
        filters: dict[str, str],
        acc: Any,
        latency: bool = True,
    ) -> None:
        n = len(keys)
        for table, measures, group_extra in (
            (
                usage_rollups,
                (
                    "calls",
                    "input_tokens",
                    "output_tokens",
                    "cost_usd",
                    "latency_ms_sum",
                    "latency_ms_sq_sum",
                    "cost_sq_sum",
                ),
                usage_rollups.c.outcome,
            ),
            (latency_rollups, ("calls",), latency_rollups.c.latency_bucket),
        ):
            if table is latency_rollups and not latency:
                continue
            columns = _rollup_keys(table, keys)
            query = (
                select(*columns, group_extra, *(func.sum(table.c[m]) for m in measures))
                .where(_rollup_range(table, window), *self._conditions(table, filters, False))
                .group_by(*columns, group_extra)
            )
            for row in connection.execute(query):
                target = acc(_key_of(row, keys))
                if table is usage_rollups:
                    target.add(str(row[n]), *row[n + 1 :])
                else:
                    target.add_bucket(int(row[n]), row[n + 1])

    def _raw_usage(
        self,
        connection: Connection,
        keys: Sequence[str],
        start: datetime,
        end: datetime,
        filters: dict[str, str],
        acc: Any,
    ) -> None:
        n = len(keys)
        columns = _raw_keys(_usage, keys, start)
        latency = _usage.c.latency_ms
        as_float = cast(latency, Float)
        cost = cast(_usage.c.estimated_cost, Float)
        # Bucketed in SQL: a few hundred groups leave the database, not one per latency.
        bucket: ColumnElement[int] = literal_column(bucket_case_sql("latency_ms")).label("bucket")
        query = (
            select(
                *columns,
                _usage.c.outcome,
                bucket,
                func.count(),
                func.sum(_usage.c.input_tokens),
                func.sum(_usage.c.output_tokens),
                func.sum(_usage.c.estimated_cost),
                func.sum(latency),
                func.sum(as_float * as_float),
                func.sum(cost * cost),
            )
            .where(
                _usage.c.created_at >= start,
                _usage.c.created_at < end,
                *self._conditions(_usage, filters, True),
            )
            .group_by(*columns, _usage.c.outcome, bucket)
        )
        for row in connection.execute(query):
            target = acc(_key_of(row, keys))
            target.add(str(row[n]), *row[n + 2 :])
            target.add_bucket(int(row[n + 1]), row[n + 2])

    def _experiment_users(
        self, experiment_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, int]:
        """Distinct users per variant: from `experiment_users` when the window is open on at
        least one side (first/last call decide), from the raw rows otherwise.
        """
        if since is not None and until is not None:
            query: Any = (
                select(_usage.c.variant_id, func.count(distinct(_usage.c.user_id)))
                .where(
                    _usage.c.experiment_id == experiment_id,
                    _usage.c.variant_id.is_not(None),
                    _usage.c.created_at >= since,
                    _usage.c.created_at < until,
                )
                .group_by(_usage.c.variant_id)
            )
        else:
            users = experiment_users.c
            conditions = [users.experiment_id == experiment_id]
            if until is not None:
                conditions.append(users.first_seen < until)
            if since is not None:
                conditions.append(users.last_seen >= since)
            query = (
                select(users.variant_id, func.count()).where(*conditions).group_by(users.variant_id)
            )
        with self.engine.connect() as connection:
            return {str(k): int(n) for k, n in connection.execute(query)}

    @database_call
    def feedback_by(
        self,
        keys: Sequence[str],
        since: datetime | None,
        until: datetime | None,
        filters: dict[str, str] | None = None,
    ) -> dict[tuple[str, ...], FeedbackGroup]:
        """Feedback per key tuple (model, context, variant, experiment, day)."""
        window = plan(since, until, DAY if "day" in keys else WEEK)
        sums: dict[tuple[str, ...], list[float]] = {}
        filters = dict(filters or {})
        with self.engine.connect() as connection:
            rows: list[Any] = []
            if window.rollups:
                table = feedback_rollups
                columns = _rollup_keys(table, keys)
                conditions = [table.c[c] == v for c, v in filters.items()]
                query = (
                    select(
                        *columns,
                        *(
                            func.sum(table.c[m])
                            for m in (
                                "feedbacks",
                                "scores",
                                "score_sum",
                                "score_sq_sum",
                                "thumbs",
                                "thumbs_up",
                            )
                        ),
                    )
                    .where(_rollup_range(table, window), *conditions)
                    .group_by(*columns)
                )
                rows.extend(connection.execute(query))
            for start, end in window.raw:
                columns = _raw_keys(_feedback, keys, start)
                score = cast(_feedback.c.quality_score, Float)
                query = (
                    select(
                        *columns,
                        func.count(),
                        func.count(_feedback.c.quality_score),
                        func.sum(score),
                        func.sum(score * score),
                        func.count(_feedback.c.thumbs),
                        func.sum(case((_feedback.c.thumbs == "UP", 1), else_=0)),
                    )
                    .where(
                        _feedback.c.created_at >= start,
                        _feedback.c.created_at < end,
                        *[_feedback.c[c] == v for c, v in filters.items()],
                    )
                    .group_by(*columns)
                )
                rows.extend(connection.execute(query))
        n = len(keys)
        for row in rows:
            key = _key_of(row, keys)
            total = sums.setdefault(key, [0, 0, 0.0, 0.0, 0, 0])
            for index, value in enumerate(row[n:]):
                # PostgreSQL sums BIGINT as NUMERIC (Decimal): back to int / float here.
                total[index] += float(value or 0) if index in (2, 3) else int(value or 0)
        found: dict[tuple[str, ...], FeedbackGroup] = {}
        for key, (feedbacks, scores, score_sum, sq_sum, thumbs, up) in sums.items():
            mean = score_sum / scores if scores else 0.0
            found[key] = FeedbackGroup(
                key="/".join(key),
                scores=int(scores),
                score_mean=mean,
                score_var=max(0.0, sq_sum / scores - mean * mean) if scores else 0.0,
                thumbs=int(thumbs),
                thumbs_up=int(up),
                feedbacks=int(feedbacks),
            )
        return found

    @database_call
    def feedback_by_variant(
        self, experiment_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, FeedbackGroup]:
        """Feedback of an experiment per variant, within the optional time range."""
        found = self.feedback_by(("variant",), since, until, {"experiment_id": experiment_id})
        return {key[0]: group for key, group in found.items()}
