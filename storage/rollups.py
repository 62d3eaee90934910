"""Rollups of usage and feedback, written in the same transaction as the raw rows.

Per hour, UTC day and week, and per (context, model, provider, experiment, variant):
- `usage_rollups` (x outcome): calls, token and cost sums, latency sum and sum of squares,
  cost sum of squares (for the cost variance of rollout guardrails);
- `usage_latency_rollups` (x latency bucket): calls, a histogram for percentiles (kept
  apart from the outcome, because percentiles are over all calls of a group);
- `usage_latency_totals` (period, bucket, latency bucket only): the same histogram summed
  over every dimension, for summaries by day without a filter (a few hundred rows a day
  to read instead of tens of thousands); ~60 rows per period per commit to write;
- `feedback_rollups`: feedback count, quality-score count, sum and sum of squares, thumbs;
- `experiment_users` (experiment, variant, user): first and last call, for assignments
  counted in users; `experiment_user_counts` (experiment, variant): how many such users,
  so an experiment's results over all time count users without reading one row per user.

Every write is an additive upsert (`SET n = n + excluded.n`) of deltas computed from the
rows that were actually inserted, so a duplicate report (same report_id) adds nothing, two
replicas can write the same rollup row concurrently, and the raw rows and their rollups
commit or roll back together. Rows are sorted by key so concurrent transactions on
PostgreSQL lock rollup rows in one order (no deadlocks).

Three periods keep every summary cheap: whole weeks come from the week rows, whole days at
either end from the day rows, whole hours from the hour rows, and the minutes before the
first (after the last) whole hour from the raw rows; an end may instead be a coarser bucket
less the finer rows outside the window, whichever reads fewer rows (see `rollup_window`).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Engine

from .bulk_sql import BulkAddUpsert, BulkInsertNew, time_binder
from .tables import (
    ExperimentUser,
    ExperimentUserCount,
    FeedbackRollup,
    UsageLatencyRollup,
    UsageLatencyTotal,
    UsageRollup,
    table_of,
)

HOUR: Final = 3600
DAY: Final = 86_400
WEEK: Final = 7 * DAY  # counted from the Unix epoch (weeks start on Thursdays, UTC)
PERIODS: Final = (HOUR, DAY, WEEK)

usage_rollups: Table = table_of(UsageRollup)
latency_rollups: Table = table_of(UsageLatencyRollup)
latency_totals: Table = table_of(UsageLatencyTotal)
feedback_rollups: Table = table_of(FeedbackRollup)
experiment_users: Table = table_of(ExperimentUser)
experiment_user_counts: Table = table_of(ExperimentUserCount)

DIMENSIONS: Final = ("context", "model_id", "provider", "experiment_id", "variant_id")

# --- latency histogram -------------------------------------------------------------------
#: Every latency up to EXACT_UP_TO ms has a bucket of its own; above, a bucket spans about
#: 4% of its lower bound and stands for its midpoint, so a percentile read from the
#: histogram is within LATENCY_RELATIVE_ERROR of the true (nearest-rank) latency.
EXACT_UP_TO: Final = 50
LATENCY_RELATIVE_ERROR: Final = 0.02
MAX_LATENCY_MS: Final = 86_400_000


def _bucket_uppers() -> list[int]:
    uppers = list(range(EXACT_UP_TO + 1))
    while uppers[-1] < MAX_LATENCY_MS:
        lower = uppers[-1] + 1
        uppers.append(int(lower * (1 + 2 * LATENCY_RELATIVE_ERROR)))
    return uppers


BUCKET_UPPERS: Final = _bucket_uppers()


def latency_bucket(latency_ms: int) -> int:
    """Index of the histogram bucket holding `latency_ms` (the last bucket holds any more)."""
    return min(bisect.bisect_left(BUCKET_UPPERS, latency_ms), len(BUCKET_UPPERS) - 1)


@functools.lru_cache(maxsize=8)
def bucket_case_sql(column: str) -> str:
    """latency_bucket() as SQL (both dialects): a balanced tree of CASEs, a few comparisons
    per row. Migration 0003 carries its own copy (migrations import no application code).
    """

    def tree(first: int, last: int) -> str:
        if first == last:
            return str(first)
        middle = (first + last) // 2
        return (
            f"CASE WHEN {column} <= {BUCKET_UPPERS[middle]} THEN {tree(first, middle)}"
            f" ELSE {tree(middle + 1, last)} END"
        )

    return tree(0, len(BUCKET_UPPERS) - 1)


def bucket_value(index: int) -> float:
    """The latency a bucket stands for: its only value, or the midpoint of its range."""
    upper = BUCKET_UPPERS[index]
    lower = BUCKET_UPPERS[index - 1] + 1 if index else 0
    return (lower + upper) / 2


# --- deltas ------------------------------------------------------------------------------


def epoch_seconds(moment: datetime) -> int:
    """Whole seconds since the epoch of an aware (or naive UTC) datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() // 1)


class RollupWriter:
    """Builds and applies the rollup deltas of freshly inserted rows (call it inside the
    transaction that inserted them).
    """

    def __init__(self, engine: Engine) -> None:
        self._usage = BulkAddUpsert(engine, usage_rollups, (*_KEY, "outcome"), USAGE_SUMS)
        self._latency = BulkAddUpsert(
            engine, latency_rollups, (*_KEY, "latency_bucket"), ("calls",)
        )
        self._totals = BulkAddUpsert(
            engine, latency_totals, ("period_seconds", "bucket_start", "latency_bucket"), ("calls",)
        )
        self._feedback = BulkAddUpsert(engine, feedback_rollups, _FEEDBACK_KEY, FEEDBACK_SUMS)
        # First and last call per (experiment, variant, user): keep the earlier / later.
        user_columns = ("experiment_id", "variant_id", "user_id", "first_seen", "last_seen")
        self._new_users = BulkInsertNew(engine, experiment_users, user_columns, user_columns[:3])
        self._user_counts = BulkAddUpsert(
            engine, experiment_user_counts, ("experiment_id", "variant_id"), ("users",)
        )
        self._users = BulkAddUpsert(
            engine,
            experiment_users,
            ("experiment_id", "variant_id", "user_id"),
            (),
            others=("first_seen", "last_seen"),
            extra_set=[
                f"{edge} = CASE WHEN excluded.{edge} {op} experiment_users.{edge}"
                f" THEN excluded.{edge} ELSE experiment_users.{edge} END"
                for edge, op in (("first_seen", "<"), ("last_seen", ">"))
            ],
        )
        self._time = time_binder(engine)

    def add_usage(self, connection: Connection, records: Iterable[Any]) -> None:
        """`records`: UsageRecord-like objects that were inserted just now."""
        # Per hour first (one dict update per record), then days and weeks from the hours:
        # a batch spans an hour or two, so that second step has few entries to fold.
        hourly: dict[tuple[Any, ...], list[Any]] = {}
        hourly_buckets: dict[tuple[Any, ...], int] = {}
        users: dict[tuple[str, str, str], list[datetime]] = {}
        for r in records:
            seconds = epoch_seconds(r.created_at)
            experiment = r.experiment_id or ""
            variant = r.variant_id or ""
            latency = r.latency_ms
            cost = r.estimated_cost
            dims = (
                seconds - seconds % HOUR,
                r.context,
                r.model_id,
                r.provider,
                experiment,
                variant,
            )
            key = (*dims, r.outcome)
            sums = hourly.get(key)
            if sums is None:
                hourly[key] = [1, r.input_tokens, r.output_tokens, cost, latency,
                               float(latency) * latency, cost * cost]  # fmt: skip
            else:
                sums[0] += 1
                sums[1] += r.input_tokens
                sums[2] += r.output_tokens
                sums[3] += cost
                sums[4] += latency
                sums[5] += float(latency) * latency
                sums[6] += cost * cost
            bucket_key = (*dims, latency_bucket(latency))
            hourly_buckets[bucket_key] = hourly_buckets.get(bucket_key, 0) + 1
            if experiment and variant and r.user_id:
                seen = users.get((experiment, variant, r.user_id))
                if seen is None:
                    users[(experiment, variant, r.user_id)] = [r.created_at, r.created_at]
                else:
                    seen[0] = min(seen[0], r.created_at)
                    seen[1] = max(seen[1], r.created_at)
        scalars: dict[tuple[Any, ...], list[Any]] = {}
        histogram: dict[tuple[Any, ...], int] = {}
        totals: dict[tuple[int, int, int], int] = {}
        for period in PERIODS:
            for (hour, *rest), sums in hourly.items():
                key = (period, hour - hour % period, *rest)
                total = scalars.get(key)
                if total is None:
                    scalars[key] = list(sums)
                else:
                    for index, value in enumerate(sums):
                        total[index] += value
            for (hour, *rest), calls in hourly_buckets.items():
                start = hour - hour % period
                key = (period, start, *rest)
                histogram[key] = histogram.get(key, 0) + calls
                total_key = (period, start, rest[-1])
                totals[total_key] = totals.get(total_key, 0) + calls
        if not scalars:
            return
        # Sorted: concurrent transactions take the rows' locks in one order (PostgreSQL).
        self._usage.run(connection, [(*key, *sums) for key, sums in sorted(scalars.items())])
        self._latency.run(connection, [(*key, n) for key, n in sorted(histogram.items())])
        self._totals.run(connection, [(*key, n) for key, n in sorted(totals.items())])
        if users:
            self._add_users(connection, users)

    def _add_users(
        self, connection: Connection, users: dict[tuple[str, str, str], list[datetime]]
    ) -> None:
        """Insert the users not seen before in their variant and count them; move the first
        and last call of the others. A user inserted concurrently by another transaction
        counts once: ON CONFLICT DO NOTHING waits for it and then skips the row.
        """
        bind = self._time
        rows = [(*key, bind(first), bind(last)) for key, (first, last) in sorted(users.items())]
        new = self._new_users.run(connection, rows)
        self._users.run(connection, [row for row in rows if row[:3] not in new])
        counts: dict[tuple[str, str], int] = {}
        for experiment, variant, _ in new:
            counts[(experiment, variant)] = counts.get((experiment, variant), 0) + 1
        self._user_counts.run(connection, [(*key, n) for key, n in sorted(counts.items())])

    def add_feedback(self, connection: Connection, records: Iterable[Any]) -> None:
        """`records`: FeedbackRecord-like objects inserted just now."""
        deltas: dict[tuple[Any, ...], list[Any]] = {}
        for r in records:
            seconds = epoch_seconds(r.created_at)
            score = r.quality_score
            for period in PERIODS:
                key = (
                    period,
                    seconds - seconds % period,
                    r.context or "",
                    r.model_id or "",
                    r.experiment_id or "",
                    r.variant_id or "",
                )
                sums = deltas.setdefault(key, [0, 0, 0.0, 0.0, 0, 0])
                sums[0] += 1
                if score is not None:
                    sums[1] += 1
                    sums[2] += score
                    sums[3] += score * score
                if r.thumbs is not None:
                    sums[4] += 1
                    sums[5] += r.thumbs == "UP"
        if deltas:
            self._feedback.run(connection, [(*key, *sums) for key, sums in sorted(deltas.items())])


_KEY: Final = ("period_seconds", "bucket_start", *DIMENSIONS)
# The additive columns of each rollup table (written here, summed by analysis_store).
USAGE_SUMS: Final = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_ms_sq_sum",
    "cost_sq_sum",
)
_FEEDBACK_KEY: Final = (
    "period_seconds",
    "bucket_start",
    "context",
    "model_id",
    "experiment_id",
    "variant_id",
)
FEEDBACK_SUMS: Final = ("feedbacks", "scores", "score_sum", "score_sq_sum", "thumbs", "thumbs_up")
