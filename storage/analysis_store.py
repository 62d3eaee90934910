"""Usage and feedback summaries, read from the rollups (see `rollups`, `rollup_window`).

A summary costs what its window has in rollup buckets (days, hours, keys, latency buckets),
not what it has in rows: totals, outcome counts and latency sums come from `usage_rollups`,
percentiles from the latency histogram (`usage_latency_rollups`, or `usage_latency_totals`
when no key or filter needs the dimensions; each within `LATENCY_RELATIVE_ERROR` of the
nearest-rank latency), and only the minutes at the ends of a window that are not whole
hours come from the raw rows, folded the same way. All of a summary's statements read one
snapshot (`read_snapshot`): a window end served by subtraction must subtract exactly the
rows that the coarser bucket added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Float, Table, case, cast, distinct, func, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from .database import database_call, read_snapshot
from .rollup_sql import (
    key_of,
    raw_keys,
    rollup_keys,
    rollup_range,
    rollup_sign,
    signed,
)
from .rollup_window import Window, plan
from .rollups import (
    DAY,
    FEEDBACK_SUMS,
    USAGE_SUMS,
    WEEK,
    bucket_case_sql,
    experiment_user_counts,
    experiment_users,
    feedback_rollups,
    latency_rollups,
    latency_totals,
    usage_rollups,
)
from .tables import LlmFeedback, LlmUsageLog, table_of
from .usage_groups import FeedbackGroup, UsageAccumulator, UsageGroup

_usage: Table = table_of(LlmUsageLog)
_feedback: Table = table_of(LlmFeedback)
GROUPS: Final = ("model", "context", "provider", "day")


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
        with read_snapshot(self.engine) as connection:
            if window.rollups:
                self._rollup_usage(connection, keys, window, filters, acc, latency)
            for sign, pieces in ((1, window.raw), (-1, window.minus_raw)):
                for start, end in pieces:
                    self._raw_usage(connection, keys, start, end, filters, acc, sign)
        return {key: found for key, found in accumulators.items() if found.prune()}

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
        # Without a filter or a key other than the day, the histogram summed over every
        # key gives the same percentiles from a few hundred rows a day.
        histogram = latency_totals if not filters and set(keys) <= {"day"} else latency_rollups
        for table, measures, group_extra in (
            (usage_rollups, USAGE_SUMS, usage_rollups.c.outcome),
            (histogram, ("calls",), histogram.c.latency_bucket),
        ):
            if table is histogram and not latency:
                continue
            columns = rollup_keys(table, keys)
            sign = rollup_sign(table, window)
            query = (
                select(
                    *columns,
                    group_extra,
                    *(func.sum(signed(table.c[m], sign)) for m in measures),
                )
                .where(rollup_range(table, window), *self._conditions(table, filters, False))
                .group_by(*columns, group_extra)
            )
            for row in connection.execute(query):
                target = acc(key_of(row, keys))
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
        sign: int,
    ) -> None:
        n = len(keys)
        columns = raw_keys(_usage, keys, start)
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
            target = acc(key_of(row, keys))
            sums = [sign * (value or 0) for value in row[n + 2 :]]
            target.add(str(row[n]), *sums)
            target.add_bucket(int(row[n + 1]), sums[0])

    def _experiment_users(
        self, experiment_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, int]:
        """Distinct users per variant: kept counts over all time, from `experiment_users`
        when the window is open on one side (first/last call decide), from the raw rows
        otherwise.
        """
        if since is None and until is None:
            counts = experiment_user_counts.c
            query: Any = select(counts.variant_id, counts.users).where(
                counts.experiment_id == experiment_id
            )
        elif since is not None and until is not None:
            query = (
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
        with read_snapshot(self.engine) as connection:
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
        # (sign, row) pairs: rollup rows come with their sign applied in SQL.
        rows: list[tuple[int, Any]] = []
        with read_snapshot(self.engine) as connection:
            if window.rollups:
                table = feedback_rollups
                columns = rollup_keys(table, keys)
                sign = rollup_sign(table, window)
                conditions = [table.c[c] == v for c, v in filters.items()]
                query = (
                    select(*columns, *(func.sum(signed(table.c[m], sign)) for m in FEEDBACK_SUMS))
                    .where(rollup_range(table, window), *conditions)
                    .group_by(*columns)
                )
                rows.extend((1, row) for row in connection.execute(query))
            for row_sign, pieces in ((1, window.raw), (-1, window.minus_raw)):
                for start, end in pieces:
                    columns = raw_keys(_feedback, keys, start)
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
                    rows.extend((row_sign, row) for row in connection.execute(query))
        n = len(keys)
        for row_sign, row in rows:
            key = key_of(row, keys)
            total = sums.setdefault(key, [0, 0, 0.0, 0.0, 0, 0])
            for index, value in enumerate(row[n:]):
                # PostgreSQL sums BIGINT as NUMERIC (Decimal): back to int / float here.
                total[index] += row_sign * (
                    float(value or 0) if index in (2, 3) else int(value or 0)
                )
        found: dict[tuple[str, ...], FeedbackGroup] = {}
        for key, (feedbacks, scores, score_sum, sq_sum, thumbs, up) in sums.items():
            if not feedbacks:
                continue  # every row of the group was subtracted: none in the window
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
