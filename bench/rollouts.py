"""One rollout-controller check of 10 rollouts over 1,000,000 usage rows (SQLite file;
PostgreSQL with MODELROUTE_BENCH_DATABASE_URL): the controller's read of every rollout's
arms from the usage rollups (`RolloutMetricsReader.read`) plus the guardrail judgement and
decision of each (`decide`). The etcd side of a check (one get per rollout, one guarded
write per change) is not included.

Raw rows are generated at revision 0004, then `upgrade()` builds and backfills the rollups
(0005, 0006), as on an existing installation. Printed against the goal (1 s) and two
baselines measured on the same table in the same run: `SELECT count(*),
sum(estimated_cost)` over the whole table, and the same check reading the raw rows (the
controller's reader before the rollups: one aggregation over the partial covering index of
migration 0004, grouped by rollout, arm, outcome and latency).
Run: `.venv/bin/python bench/rollouts.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from modelroute.server.core.rollout_spec import CANDIDATE_ARM, PROGRESS_DIR, RolloutProgress
from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.server.usage.rollout_controller import decide, window_of
from modelroute.server.usage.rollout_metrics import (
    ArmStats,
    RolloutArms,
    RolloutMetricsReader,
    RolloutWindow,
)
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.database import MIGRATIONS_DIR, create_engine_for, upgrade
from modelroute.storage.tables import LlmFeedback, LlmUsageLog
from sqlalchemy import Float, and_, case, cast, func, insert, or_, select, text
from sqlalchemy.engine import Engine

ROLLOUTS = 10
END = datetime(2026, 12, 1, tzinfo=UTC)
# Mid-hour instants, as a real rollout's start and step start are.
STARTED = END - timedelta(days=7) + timedelta(minutes=17, seconds=13)
STEP_STARTED = STARTED + timedelta(days=3, minutes=29)
GOAL_SECONDS = 1.0


def timed(call: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def fill(url: str, rows: int) -> None:
    """60% of the rows belong to one of the 10 rollouts (a tenth of those on the
    candidate), the rest to other contexts; 1% of the rollout calls have feedback."""
    engine = create_engine_for(url)
    rng = random.Random(1)
    usage, feedback = LlmUsageLog.__table__, LlmFeedback.__table__  # type: ignore[attr-defined]
    chunk = 50_000
    with engine.begin() as connection:
        for start in range(0, rows, chunk):
            batch, scores = [], []
            for n in range(start, min(rows, start + chunk)):
                in_rollout = n % 5 < 3
                index = (n // 5) % ROLLOUTS  # every rollout gets rows (n % 5 decides who)
                rollout = f"r{index}"
                arm = "candidate" if rng.random() < 0.1 else "baseline"
                batch.append(
                    {
                        "report_id": f"r{n}",
                        "decision_id": f"d{n}",
                        "context": f"ctx{index}" if in_rollout else "other",
                        "model_id": "cand" if in_rollout and arm == "candidate" else "base",
                        "provider": "p",
                        "outcome": "OK" if rng.random() > 0.03 else "TIMEOUT",
                        "input_tokens": rng.randrange(100, 4000),
                        "output_tokens": rng.randrange(10, 800),
                        "latency_ms": int(rng.lognormvariate(6, 0.5)),
                        "estimated_cost": rng.random() / 100,
                        "experiment_id": rollout if in_rollout else None,
                        "variant_id": arm if in_rollout else None,
                        "reason": "ROLLOUT" if in_rollout else "CONTEXT_DEFAULT",
                        "config_revision": 1,
                        "created_at": END - timedelta(seconds=rng.randrange(7 * 86_400)),
                    }
                )
                if in_rollout and n % 100 == 0:
                    scores.append(
                        {
                            "decision_id": f"d{n}",
                            "quality_score": rng.random(),
                            "thumbs": "UP" if rng.random() < 0.7 else "DOWN",
                            "source": "REVIEWER",
                            "experiment_id": rollout,
                            "variant_id": arm,
                            "created_at": END - timedelta(seconds=rng.randrange(7 * 86_400)),
                        }
                    )
            connection.execute(insert(usage), batch)
            if scores:
                connection.execute(insert(feedback), scores)
    engine.dispose()


def snapshot_with_rollouts():  # type: ignore[no-untyped-def]
    values = {
        "models/base": b'{"provider": "p"}',
        "models/cand": b'{"provider": "p"}',
        "settings": b'{"default_model": "base"}',
    }
    guardrails = [
        {"metric": "ERROR_RATE", "max_increase": 0.02},
        {"metric": "P95_LATENCY_MS", "max_relative_increase": 0.25},
        {"metric": "COST_PER_CALL", "max_relative_increase": 0.5},
        {"metric": "QUALITY", "max_decrease": 0.05},
        {"metric": "THUMBS_UP_RATE", "max_decrease": 0.05},
    ]
    for index in range(ROLLOUTS):
        values[f"contexts/ctx{index}"] = b'{"model": "base"}'
        rollout = {
            "context": f"ctx{index}",
            "candidate": "cand",
            "steps": [{"percent": 10, "min_calls": 10**9}, {"percent": 100}],
            "guardrails": guardrails,
            "enabled": True,
        }
        values[f"rollouts/r{index}"] = json.dumps(rollout).encode()
        progress = RolloutProgress("RUNNING", 0, 10, STARTED, STEP_STARTED, f"ctx{index}|cand")
        values[f"{PROGRESS_DIR}r{index}"] = progress.to_json("bench", "")
    snapshot, rejected = SnapshotBuilder().apply(1, values, END)
    assert not rejected, rejected
    return snapshot


def old_bucket(latency_ms: int) -> int:
    """The raw-row reader's latency buckets (exact below 1 s, then 3 significant digits)."""
    if latency_ms < 1_000:
        return latency_ms
    digits = 10 ** (int(math.log10(latency_ms)) - 2)
    return latency_ms // digits * digits


def raw_row_read(engine: Engine, windows: Mapping[str, RolloutWindow]) -> RolloutArms:
    """The baseline: the controller's reader before the rollups, over the raw rows."""
    usage, feedback = LlmUsageLog.__table__, LlmFeedback.__table__  # type: ignore[attr-defined]
    found: RolloutArms = {rid: defaultdict(ArmStats) for rid in windows}
    rollout, ids = usage.c.experiment_id, list(windows)
    # A literal, so that SQLite can prove the partial index of migration 0004 applies.
    rollout_rows = text("llm_usage_logs.reason = 'ROLLOUT'")

    def since(column: str, table=usage):  # type: ignore[no-untyped-def]
        return or_(
            *(
                and_(
                    table.c.experiment_id == w.rollout_id, table.c.created_at >= getattr(w, column)
                )
                for w in windows.values()
            )
        )

    cost = cast(usage.c.estimated_cost, Float)
    histogram = (
        select(
            rollout,
            usage.c.variant_id,
            usage.c.outcome,
            usage.c.latency_ms,
            func.count(),
            func.sum(cost),
            func.sum(cost * cost),
        )
        .where(and_(rollout_rows, rollout.in_(ids), since("since")))
        .group_by(rollout, usage.c.variant_id, usage.c.outcome, usage.c.latency_ms)
    )
    step_calls = (
        select(rollout, func.count())
        .where(
            and_(
                rollout_rows,
                rollout.in_(ids),
                usage.c.variant_id == CANDIDATE_ARM,
                since("step_since"),
            )
        )
        .group_by(rollout)
    )
    score = cast(feedback.c.quality_score, Float)
    feedback_sums = (
        select(
            feedback.c.experiment_id,
            feedback.c.variant_id,
            func.count(feedback.c.quality_score),
            func.sum(score),
            func.sum(score * score),
            func.count(feedback.c.thumbs),
            func.sum(case((feedback.c.thumbs == "UP", 1), else_=0)),
        )
        .where(since("since", feedback))
        .group_by(feedback.c.experiment_id, feedback.c.variant_id)
    )
    with engine.connect() as connection:
        for rid, arm, outcome, latency, count, cost_sum, cost_sq in connection.execute(histogram):
            stats = found[str(rid)][str(arm)]
            stats.calls += int(count)
            stats.errors += int(count) if outcome != "OK" else 0
            stats.cost_sum += float(cost_sum or 0.0)
            stats.cost_sq_sum += float(cost_sq or 0.0)
            bucket = old_bucket(int(latency))
            stats.latency_histogram[bucket] = stats.latency_histogram.get(bucket, 0) + int(count)
        for rid, count in connection.execute(step_calls):
            found[str(rid)][CANDIDATE_ARM].calls_since_step = int(count)
        for rid, arm, scores, total, squares, thumbs, up in connection.execute(feedback_sums):
            if arm is not None:
                stats = found[str(rid)][str(arm)]
                stats.quality_n, stats.quality_sum = int(scores or 0), float(total or 0.0)
                stats.quality_sq_sum, stats.thumbs = float(squares or 0.0), int(thumbs or 0)
                stats.thumbs_up = int(up or 0)
    return {rid: dict(arms) for rid, arms in found.items()}


def build(url: str, rows: int) -> None:
    """Raw rows at revision 0004, then upgrade() to head (rollups created and backfilled)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine_for(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    engine.dispose()
    started = time.perf_counter()
    fill(url, rows)
    print(f"filled {rows:,} raw rows in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    upgrade(url)
    print(f"migrations 0005 + 0006 (rollups + backfill) took {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("MODELROUTE_BENCH_DATABASE_URL") or f"sqlite:///{Path(tmp) / 'u.db'}"
        build(url, args.rows)
        engine = create_engine_for(url)
        reader = RolloutMetricsReader(AnalysisStore(engine))
        snapshot = snapshot_with_rollouts()
        specs = list(snapshot.rollouts.values())
        windows = {s.rollout_id: window_of(s, END) for s in specs}

        def full_table() -> None:
            with engine.connect() as connection:
                connection.execute(
                    text("SELECT count(*), sum(estimated_cost) FROM llm_usage_logs")
                ).one()

        def judged(arms: RolloutArms) -> None:
            for spec in specs:
                decision = decide(spec, arms[spec.rollout_id], END)
                assert decision.progress is None  # healthy, step minimums not met: hold
                assert not any(v.breached for v in decision.verdicts)

        def check() -> None:
            judged(reader.read(windows))

        def raw_check() -> None:
            judged(raw_row_read(engine, windows))

        # Both readers see the same calls (the rollups are exact for counts and sums).
        rolled, raw = reader.read(windows), raw_row_read(engine, windows)
        for rid in windows:
            for arm in ("candidate", "baseline"):
                a, b = rolled[rid][arm], raw[rid][arm]
                assert (a.calls, a.errors, a.calls_since_step) == (b.calls, b.errors,
                                                                   b.calls_since_step)  # fmt: skip
        base = timed(full_table, args.repeat)
        raw_seconds = timed(raw_check, args.repeat)
        seconds = timed(check, args.repeat)
        rollout_rows = args.rows * 3 // 5
        print(f"baseline, full-table aggregate: {base * 1000:.0f} ms")
        print(f"baseline, the same check over the raw rows: {raw_seconds * 1000:.0f} ms")
        print(
            f"one controller check from the rollups, {ROLLOUTS} rollouts x 5 guardrails "
            f"({rollout_rows:,} rows in rollouts): {seconds * 1000:.1f} ms -> "
            f"{seconds / GOAL_SECONDS:.3f}x the 1 s goal, {seconds / base:.3f}x the full-table "
            f"aggregate, {seconds / raw_seconds:.3f}x the raw-row check "
            f"({raw_seconds / seconds:.0f}x faster)"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
