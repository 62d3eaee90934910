"""Rollups against the raw rows they summarise, on the real database (SQLite file, or
PostgreSQL with MODELROUTE_TEST_DATABASE_URL): every summary equals the raw-row aggregate
exactly (integers; float sums to rounding), percentiles are within the histogram's stated
error, a duplicate report adds nothing, and the migration's backfill builds the same
rollups as live writing."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.arm_stats import arm_stats
from modelroute.storage.database import MIGRATIONS_DIR, create_engine_for, upgrade
from modelroute.storage.preference_store import FeedbackRecord, FeedbackStore
from modelroute.storage.rollup_window import Window, plan
from modelroute.storage.rollups import (
    DAY,
    HOUR,
    LATENCY_RELATIVE_ERROR,
    WEEK,
    bucket_case_sql,
    bucket_value,
    latency_bucket,
)
from modelroute.storage.usage_groups import PERCENTILES
from modelroute.storage.usage_store import UsageRecord, UsageStore
from sqlalchemy import Engine, text

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-sonnet", "anthropic")]
CONTEXTS = ["rag.answer", "reranker", "premium.answer"]
OUTCOMES = ["OK"] * 8 + ["TIMEOUT", "RATE_LIMITED"]
ROLLUP_TABLES = (
    "usage_rollups",
    "usage_latency_rollups",
    "usage_latency_totals",
    "feedback_rollups",
    "experiment_users",
    "experiment_user_counts",
)


def moment(rng: random.Random) -> datetime:
    """Mostly three days, some over the month before (several weeks), at any microsecond."""
    if rng.random() < 0.85:
        return T0 + timedelta(seconds=rng.uniform(0, 3 * 86_400))
    return T0 - timedelta(seconds=rng.uniform(0, 30 * 86_400))


def seeded_records(count: int, seed: int = 3) -> list[UsageRecord]:
    rng = random.Random(seed)
    records = []
    for n in range(count):
        model, provider = MODELS[rng.randrange(3)]
        in_experiment = rng.random() < 0.4
        records.append(
            UsageRecord(
                report_id=f"r{n}",
                decision_id=None,
                context=CONTEXTS[rng.randrange(3)],
                model_id=model,
                provider=provider,
                outcome=rng.choice(OUTCOMES),
                user_id=f"u{rng.randrange(150)}" if rng.random() < 0.9 else None,
                tier=None,
                input_tokens=rng.randrange(0, 5000),
                output_tokens=rng.randrange(0, 900),
                # Mostly sub-second, some very long; 0 and exact small values too.
                latency_ms=rng.choice(
                    [int(rng.lognormvariate(6, 0.7)), rng.randrange(0, 60), rng.randrange(10**7)]
                    if rng.random() < 0.1
                    else [int(rng.lognormvariate(6, 0.7))]
                ),
                estimated_cost=rng.random() / 100,
                error_message=None,
                retry_after_ms=None,
                experiment_id="e1" if in_experiment else None,
                variant_id=rng.choice(["a", "b"]) if in_experiment else None,
                reason=None,
                config_revision=1,
                trace_id=None,
                created_at=moment(rng),
            )
        )
    return records


def seeded_feedback(count: int, seed: int = 5) -> list[FeedbackRecord]:
    rng = random.Random(seed)
    found = []
    for n in range(count):
        model, _ = MODELS[rng.randrange(3)]
        in_experiment = rng.random() < 0.5
        found.append(
            FeedbackRecord(
                decision_id=f"d{n}",
                thumbs=rng.choice(["UP", "DOWN", None]),
                quality_score=rng.random() if rng.random() < 0.7 else None,
                source="USER",
                comment=None,
                experiment_id="e1" if in_experiment else None,
                variant_id=rng.choice(["a", "b"]) if in_experiment else None,
                model_id=model,
                context=CONTEXTS[rng.randrange(3)],
                created_at=moment(rng),
            )
        )
    return found


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(engine: Engine) -> tuple[list[UsageRecord], list[FeedbackRecord]]:
    records, feedback = seeded_records(2500), seeded_feedback(400)
    store = UsageStore(engine)
    for start in range(0, len(records), 500):
        assert all(store.insert_batch(records[start : start + 500]))
    feedback_store = FeedbackStore(engine)
    for item in feedback:
        feedback_store.insert(item)
    return records, feedback


def raw_usage(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT model_id, context, provider, outcome, input_tokens, output_tokens,"
                    " estimated_cost, latency_ms, experiment_id, variant_id, user_id, created_at"
                    " FROM llm_usage_logs"
                )
            )
        )


def as_utc(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite through a plain text() query
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def in_window(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or moment >= since) and (until is None or moment < until)


def nearest_rank(values: list[int], q: int) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered) / 100) - 1]


WINDOWS = [
    (None, None),
    (T0 + timedelta(hours=5), T0 + timedelta(days=2)),  # whole hours and a whole day
    # Unaligned at both ends, across days: raw minutes, hours, a day, hours, raw minutes.
    (
        T0 + timedelta(hours=7, minutes=13, microseconds=5),
        T0 + timedelta(days=2, hours=3, minutes=1),
    ),
    (T0 + timedelta(hours=30, minutes=5), T0 + timedelta(hours=30, minutes=50)),  # in one hour
    (T0 + timedelta(hours=30, minutes=5), T0 + timedelta(hours=31, minutes=50)),  # two partials
    (T0 + timedelta(hours=40, seconds=1), None),
    (None, T0 + timedelta(hours=20, minutes=59, seconds=59, microseconds=999_999)),
    # Weeks in the middle, days and hours and minutes at both ends.
    (T0 - timedelta(days=25, hours=3, minutes=7), T0 + timedelta(days=2, minutes=30)),
    (T0 - timedelta(days=19, seconds=1), None),
    # Served by subtraction (rollup_window): the last 24 hours from late in an hour are
    # a day's bucket plus raw minutes before it, less the raw minutes after `until`.
    (T0 + timedelta(hours=23, minutes=42, seconds=57), T0 + timedelta(hours=47, minutes=42)),
    # Days less hours, a week less days, hours less raw minutes, at both ends.
    (T0 + timedelta(hours=2, minutes=50), T0 + timedelta(days=2, hours=21, minutes=55)),
    (T0 - timedelta(days=13, hours=22, minutes=59), T0 + timedelta(hours=23, minutes=58)),
    (None, T0 + timedelta(days=1, hours=21, minutes=51, microseconds=7)),
]


def test_summaries_equal_the_raw_rows(engine: Engine, seeded: Any) -> None:
    for since, until in WINDOWS:
        check_usage_summaries(engine, since, until)


def check_usage_summaries(engine: Engine, since: datetime | None, until: datetime | None) -> None:
    rows = [r for r in raw_usage(engine) if in_window(as_utc(r.created_at), since, until)]
    assert rows  # every window sees data, so the comparison means something
    store = AnalysisStore(engine)
    for group_by, key_of in (
        ("model", lambda r: r.model_id),
        ("context", lambda r: r.context),
        ("provider", lambda r: r.provider),
        ("day", lambda r: as_utc(r.created_at).strftime("%Y-%m-%d")),
    ):
        expected: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            expected[key_of(row)].append(row)
        groups = store.usage(group_by, since, until)
        assert [g.key for g in groups] == sorted(expected), group_by
        for group in groups:
            members = expected[group.key]
            outcomes: dict[str, int] = defaultdict(int)
            for row in members:
                outcomes[row.outcome] += 1
            assert group.calls == len(members)
            assert group.by_outcome == outcomes
            assert group.errors == len(members) - outcomes.get("OK", 0)
            assert group.input_tokens == sum(r.input_tokens for r in members)
            assert group.output_tokens == sum(r.output_tokens for r in members)
            assert group.cost_usd == pytest.approx(sum(r.estimated_cost for r in members), rel=1e-9)
            latencies = [r.latency_ms for r in members]
            assert group.latency_mean_ms == pytest.approx(
                sum(latencies) / len(latencies), rel=1e-12
            )
            assert set(group.percentiles) == set(PERCENTILES), (group_by, group.key)
            for q, value in group.percentiles.items():
                exact = nearest_rank(latencies, q)
                assert abs(value - exact) <= LATENCY_RELATIVE_ERROR * exact, (group.key, q)


def test_experiment_and_feedback_summaries_equal_the_raw_rows(engine: Engine, seeded: Any) -> None:
    for since, until in WINDOWS:
        check_experiment_summaries(engine, seeded[1], since, until)


def check_experiment_summaries(
    engine: Engine, feedback: list[FeedbackRecord], since: datetime | None, until: datetime | None
) -> None:
    rows = [
        r
        for r in raw_usage(engine)
        if r.experiment_id == "e1" and in_window(as_utc(r.created_at), since, until)
    ]
    store = AnalysisStore(engine)
    groups = {
        g.key: g
        for g in store.usage("variant", since, until, experiment_id="e1", distinct_users=True)
    }
    assert sorted(groups) == sorted({r.variant_id for r in rows})
    for variant, group in groups.items():
        members = [r for r in rows if r.variant_id == variant]
        assert group.calls == len(members)
        assert group.errors == sum(r.outcome != "OK" for r in members)
        assert group.units == len({r.user_id for r in members if r.user_id})

    chosen = [
        f for f in feedback if f.experiment_id == "e1" and in_window(f.created_at, since, until)
    ]
    found = store.feedback_by_variant("e1", since, until)
    assert sorted(found) == sorted({f.variant_id or "" for f in chosen})
    for variant, fb in found.items():
        members = [f for f in chosen if f.variant_id == variant]
        scores = [f.quality_score for f in members if f.quality_score is not None]
        assert fb.feedbacks == len(members)
        assert fb.scores == len(scores)
        assert fb.thumbs == sum(f.thumbs is not None for f in members)
        assert fb.thumbs_up == sum(f.thumbs == "UP" for f in members)
        if scores:
            assert fb.score_mean == pytest.approx(sum(scores) / len(scores), rel=1e-9)


def test_arm_stats_per_context_model_and_variant(engine: Engine, seeded: Any) -> None:
    records, feedback = seeded
    since, until = T0 + timedelta(hours=3, minutes=30), T0 + timedelta(days=1, hours=2, minutes=7)
    arms = arm_stats(AnalysisStore(engine), since, until, context="rag.answer")
    chosen = [
        r for r in records if r.context == "rag.answer" and in_window(r.created_at, since, until)
    ]
    expected: dict[tuple[str, str, str], list[UsageRecord]] = defaultdict(list)
    for r in chosen:
        expected[(r.model_id, r.experiment_id or "", r.variant_id or "")].append(r)
    usage_arms = [a for a in arms if a.calls]
    assert {(a.model_id, a.experiment_id, a.variant_id) for a in usage_arms} == set(expected)
    for arm in usage_arms:
        members = expected[(arm.model_id, arm.experiment_id, arm.variant_id)]
        assert arm.context == "rag.answer"
        assert (arm.calls, arm.errors) == (len(members), sum(r.outcome != "OK" for r in members))
        assert arm.cost_per_call_usd == pytest.approx(
            sum(r.estimated_cost for r in members) / len(members), rel=1e-9
        )
        p95 = nearest_rank([r.latency_ms for r in members], 95)
        assert abs(arm.latency_p95_ms - p95) <= LATENCY_RELATIVE_ERROR * p95
        scores = [
            f.quality_score
            for f in feedback
            if f.context == "rag.answer"
            and (f.model_id, f.experiment_id or "", f.variant_id or "")
            == (arm.model_id, arm.experiment_id, arm.variant_id)
            and f.quality_score is not None
            and in_window(f.created_at, since, until)
        ]
        if scores:
            assert arm.quality_mean == pytest.approx(sum(scores) / len(scores), rel=1e-9)
        else:
            assert arm.quality_mean is None


def rollup_contents(engine: Engine, *, approx: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup row; with `approx`, float sums (cost, squares) compare to rounding only."""
    contents = {}
    with engine.connect() as connection:
        for table in ROLLUP_TABLES:
            rows = connection.execute(text(f"SELECT * FROM {table}"))
            contents[table] = sorted(
                (
                    tuple(str(v) for v in row if not isinstance(v, float)),
                    tuple(
                        pytest.approx(v, rel=1e-9) if approx else v
                        for v in row
                        if isinstance(v, float)
                    ),
                )
                for row in rows
            )
    return contents


def test_a_duplicate_report_adds_nothing(engine: Engine, seeded: Any) -> None:
    records, _ = seeded
    before = rollup_contents(engine, approx=True)
    store = UsageStore(engine)
    again = [*records[:300], records[5]]  # retried reports, one twice in a batch
    assert store.insert_batch(again) == [False] * len(again)
    assert rollup_contents(engine) == before


def test_backfill_builds_the_same_rollups_as_live_writing(
    engine: Engine, seeded: Any, database_url: str
) -> None:
    live = rollup_contents(engine, approx=True)
    assert all(live.values())
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")  # drops the rollups; raw rows stay
    with engine.connect() as connection:
        names = {r[0] for r in connection.execute(text("SELECT count(*) FROM llm_usage_logs"))}
    assert names == {2500}
    upgrade(database_url)  # recreates and backfills from the raw rows
    assert rollup_contents(engine) == live


def test_a_group_whose_rows_are_all_subtracted_is_not_reported(engine: Engine) -> None:
    """The last 24 hours until 23:42:57 read that day's bucket less the raw minutes after
    23:42:57: a model used only in those minutes has no calls in the window and must not
    appear as a group of zero calls (nor its outcome, nor its feedback)."""
    day = datetime(2026, 11, 24, tzinfo=UTC)
    until = day + timedelta(hours=23, minutes=42, seconds=57)
    first, second = seeded_records(2, seed=9)
    inside = replace(first, created_at=day + timedelta(hours=12), model_id="inside", outcome="OK")
    after = replace(second, created_at=until, model_id="after", outcome="TIMEOUT")
    assert UsageStore(engine).insert_batch([inside, after]) == [True, True]
    feedback_store = FeedbackStore(engine)
    for record, feedback in zip((inside, after), seeded_feedback(2, seed=9), strict=True):
        feedback_store.insert(
            replace(feedback, model_id=record.model_id, created_at=record.created_at)
        )
    window = plan(until - timedelta(hours=24), until)
    assert window.minus_raw  # the case under test: served by subtraction
    store = AnalysisStore(engine)
    groups = store.usage("model", until - timedelta(hours=24), until)
    assert [(g.key, g.calls, g.by_outcome) for g in groups] == [("inside", 1, {"OK": 1})]
    found = store.feedback_by(("model",), until - timedelta(hours=24), until)
    assert list(found) == [("inside",)] and found[("inside",)].feedbacks == 1


def signed_pieces(window: Window) -> list[tuple[int, float, float]]:
    """(sign, start, end) in epoch seconds of every piece of a bounded window's plan."""
    pieces = [(1, a.timestamp(), b.timestamp()) for a, b in window.raw]
    pieces += [(-1, a.timestamp(), b.timestamp()) for a, b in window.minus_raw]
    for sign, ranges in ((1, window.rollups), (-1, window.minus_rollups)):
        for period, start, end in ranges:
            assert start is not None and end is not None
            assert start % period == 0 and end % period == 0 and start < end
            pieces.append((sign, float(start), float(end)))
    return pieces


def test_window_plan_covers_the_window_exactly_once() -> None:
    rng = random.Random(11)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(500):
        since = base + timedelta(seconds=rng.uniform(0, 60 * 86_400))
        until = since + timedelta(
            seconds=rng.choice([30, 4000, 90_000, 40 * 86_400]) * rng.random()
        )
        window = plan(since, until)
        pieces = signed_pieces(window)
        # Added minus subtracted pieces cover each instant of the window once, none outside.
        edges = sorted({since.timestamp(), until.timestamp()} | {e for p in pieces for e in p[1:]})
        for a, b in itertools.pairwise(edges):
            middle = (a + b) / 2
            net = sum(sign for sign, start, end in pieces if start <= middle < end)
            assert net == (1 if since.timestamp() <= middle < until.timestamp() else 0)
        # Raw rows only near the ends: at most about half an hour at each (40 minutes:
        # subtracting costs an hour bucket more), or the whole window if that is shorter.
        raw = [(b - a).total_seconds() for a, b in [*window.raw, *window.minus_raw]]
        assert sum(raw) <= min(2 * 2400, (until - since).total_seconds() + 2400), raw
        assert all(length <= 2400 for length in raw) or raw == [(until - since).total_seconds()]
    long = plan(base + timedelta(hours=5, minutes=1), base + timedelta(days=40, hours=1))
    assert {period for period, _, _ in long.rollups + long.minus_rollups} == {HOUR, DAY, WEEK}
    # Results by day never read week rows; an open window reads only the coarsest rows.
    by_day = plan(base, base + timedelta(days=40), coarsest=DAY)
    assert {p for p, _, _ in by_day.rollups + by_day.minus_rollups} == {DAY}
    assert plan(None, None).rollups == [(WEEK, None, None)] and not plan(None, None).raw


def test_the_last_24_hours_read_one_day_and_minutes_not_23_hours() -> None:
    until = datetime(2026, 11, 24, 23, 42, 57, tzinfo=UTC)
    window = plan(until - timedelta(hours=24), until)
    assert window.rollups == [(DAY, 1795478400, 1795564800)]  # 2026-11-24
    assert not window.minus_rollups
    # 23:42:57-24:00 of the day before added, of the last day subtracted: 2 x 17 minutes.
    assert window.raw == [(until - timedelta(hours=24), datetime(2026, 11, 24, tzinfo=UTC))]
    assert window.minus_raw == [(until, datetime(2026, 11, 25, tzinfo=UTC))]


def test_latency_buckets_in_sql_match_python(engine: Engine) -> None:
    rng = random.Random(2)
    values = [*range(0, 3000), *(rng.randrange(86_400_001) for _ in range(3000)), 86_400_000]
    with engine.begin() as connection:
        connection.execute(text("CREATE TEMPORARY TABLE latencies (v BIGINT)"))
        connection.execute(
            text("INSERT INTO latencies (v) VALUES (:v)"), [{"v": v} for v in values]
        )
        rows = connection.execute(text(f"SELECT v, {bucket_case_sql('v')} FROM latencies"))
        in_sql = {int(v): int(bucket) for v, bucket in rows}
    assert in_sql == {v: latency_bucket(v) for v in values}
    for v in values:  # and the stated error holds for every value
        assert abs(bucket_value(latency_bucket(v)) - v) <= LATENCY_RELATIVE_ERROR * v
