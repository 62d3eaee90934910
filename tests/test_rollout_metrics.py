"""The rollout controller's figures come from the usage rollups and equal the raw rows they
summarise (real database: SQLite file, or PostgreSQL with MODELROUTE_TEST_DATABASE_URL):
a rollout that started mid-hour counts exactly its rows since that instant, the step's
candidate calls since the step's instant, errors, cost sums and sums of squares (the
COST_PER_CALL variance), feedback, and the p95 within the histogram's stated error."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from modelroute.server.usage.rollout_metrics import RolloutMetricsReader, RolloutWindow
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.preference_store import FeedbackRecord, FeedbackStore
from modelroute.storage.rollups import LATENCY_RELATIVE_ERROR
from modelroute.storage.usage_store import UsageRecord, UsageStore
from sqlalchemy import Engine

NOW = datetime(2026, 11, 30, 17, 40, 0, tzinfo=UTC)
# Not on hour boundaries: the window's first minutes come from the raw rows.
STARTED = NOW - timedelta(days=9, minutes=17, seconds=13, microseconds=250_000)
STEP_STARTED = NOW - timedelta(hours=30, minutes=41, seconds=7)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def usage_rows(count: int) -> list[UsageRecord]:
    rng = random.Random(11)
    rows = []
    for n in range(count):
        rollout = rng.choice(["r1", "r2", None])
        arm = ("candidate" if rng.random() < 0.3 else "baseline") if rollout else None
        rows.append(
            UsageRecord(
                report_id=f"u{n}",
                decision_id=f"d{n}",
                context="chat",
                model_id=rng.choice(["cand", "base", "fallback"]),
                provider="p",
                outcome="OK" if rng.random() < 0.9 else "TIMEOUT",
                user_id=f"user{rng.randrange(50)}",
                tier=None,
                input_tokens=rng.randrange(1000),
                output_tokens=rng.randrange(300),
                latency_ms=int(rng.lognormvariate(6, 0.6)),
                estimated_cost=rng.random() / 50,
                error_message=None,
                retry_after_ms=None,
                experiment_id=rollout,
                variant_id=arm,
                reason="ROLLOUT" if rollout else None,
                config_revision=1,
                trace_id=None,
                # Twelve days up to now: some rows before the rollout started.
                created_at=NOW - timedelta(seconds=rng.uniform(0, 12 * 86_400)),
            )
        )
    return rows


def feedback_rows(count: int) -> list[FeedbackRecord]:
    rng = random.Random(12)
    return [
        FeedbackRecord(
            decision_id=f"d{n}",
            thumbs=rng.choice(["UP", "DOWN", None]),
            quality_score=rng.random() if rng.random() < 0.8 else None,
            source="USER",
            comment=None,
            experiment_id="r1",
            variant_id=rng.choice(["candidate", "baseline"]),
            model_id="cand",
            context="chat",
            created_at=NOW - timedelta(seconds=rng.uniform(0, 12 * 86_400)),
        )
        for n in range(count)
    ]


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_rollout_arms_from_rollups_equal_the_raw_rows(engine: Engine) -> None:
    rows = usage_rows(4000)
    feedback = feedback_rows(600)
    UsageStore(engine).insert_batch(rows)
    feedback_store = FeedbackStore(engine)
    for record in feedback:
        feedback_store.insert(record)
    reader = RolloutMetricsReader(AnalysisStore(engine))

    arms = reader.read({"r1": RolloutWindow("r1", STARTED, STEP_STARTED)})["r1"]

    assert set(arms) == {"candidate", "baseline"}
    for arm, stats in arms.items():
        mine = [r for r in rows if r.experiment_id == "r1" and r.variant_id == arm]
        window = [r for r in mine if r.created_at >= STARTED]
        assert stats.calls == len(window) and len(window) < len(mine)
        assert stats.errors == sum(r.outcome != "OK" for r in window)
        assert stats.cost_sum == pytest.approx(sum(r.estimated_cost for r in window), rel=1e-9)
        assert stats.cost_sq_sum == pytest.approx(
            sum(r.estimated_cost**2 for r in window), rel=1e-9
        )
        p95 = nearest_rank([r.latency_ms for r in window], 0.95)
        assert abs(stats.latency_quantile(0.95) - p95) <= LATENCY_RELATIVE_ERROR * p95
        scores = [
            f.quality_score
            for f in feedback
            if f.variant_id == arm and f.created_at >= STARTED and f.quality_score is not None
        ]
        assert stats.quality_n == len(scores)
        assert stats.quality_sum == pytest.approx(sum(scores), rel=1e-9)
        assert stats.quality_sq_sum == pytest.approx(sum(s * s for s in scores), rel=1e-9)
        thumbs = [f.thumbs for f in feedback if f.variant_id == arm and f.created_at >= STARTED]
        assert stats.thumbs == sum(t is not None for t in thumbs)
        assert stats.thumbs_up == thumbs.count("UP")
    step = [
        r
        for r in rows
        if r.experiment_id == "r1" and r.variant_id == "candidate" and r.created_at >= STEP_STARTED
    ]
    assert arms["candidate"].calls_since_step == len(step) > 0


def test_a_rollout_without_calls_has_no_arms(engine: Engine) -> None:
    UsageStore(engine).insert_batch(usage_rows(200))
    reader = RolloutMetricsReader(AnalysisStore(engine))
    assert reader.read({"r9": RolloutWindow("r9", STARTED, STARTED)}) == {"r9": {}}
