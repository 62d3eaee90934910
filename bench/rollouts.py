"""One rollout-controller check of 10 rollouts over 1,000,000 usage rows (SQLite file;
PostgreSQL with MODELROUTE_BENCH_DATABASE_URL): the one aggregation query for all rollouts
(`RolloutMetricsReader.read`) plus the guardrail judgement and decision of each
(`decide`). The etcd side of a check (one get per rollout, one guarded write per change)
is not included. Printed with its ratio to a baseline measured on the same table in the
same run: `SELECT count(*), sum(estimated_cost)` over the whole table.
Run: `.venv/bin/python bench/rollouts.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelroute.server.core.rollout_spec import PROGRESS_DIR, RolloutProgress
from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.server.usage.rollout_controller import decide, window_of
from modelroute.server.usage.rollout_metrics import RolloutMetricsReader
from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.tables import LlmFeedback, LlmUsageLog
from sqlalchemy import insert, text

ROLLOUTS = 10
END = datetime(2026, 12, 1, tzinfo=UTC)
STARTED = END - timedelta(days=7)


def timed(call: Callable[[], object], repeat: int = 3) -> float:
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
                rollout = f"r{n % ROLLOUTS}"
                arm = "candidate" if rng.random() < 0.1 else "baseline"
                batch.append(
                    {
                        "report_id": f"r{n}",
                        "decision_id": f"d{n}",
                        "context": f"ctx{n % ROLLOUTS}" if in_rollout else "other",
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
        progress = RolloutProgress(
            "RUNNING", 0, 10, STARTED, STARTED + timedelta(days=3), f"ctx{index}|cand"
        )
        values[f"{PROGRESS_DIR}r{index}"] = progress.to_json("bench", "")
    snapshot, rejected = SnapshotBuilder().apply(1, values, END)
    assert not rejected, rejected
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("MODELROUTE_BENCH_DATABASE_URL") or f"sqlite:///{Path(tmp) / 'u.db'}"
        upgrade(url)
        started = time.perf_counter()
        fill(url, args.rows)
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        engine = create_engine_for(url)
        reader = RolloutMetricsReader(engine)
        snapshot = snapshot_with_rollouts()
        specs = list(snapshot.rollouts.values())

        def baseline() -> None:
            with engine.connect() as connection:
                connection.execute(
                    text("SELECT count(*), sum(estimated_cost) FROM llm_usage_logs")
                ).one()

        def check() -> None:
            arms = reader.read({s.rollout_id: window_of(s, END) for s in specs})
            for spec in specs:
                decision = decide(spec, arms[spec.rollout_id], END)
                assert decision.progress is None  # healthy, step minimums not met: hold

        base = timed(baseline)
        seconds = timed(check)
        rollout_rows = args.rows * 3 // 5
        print(f"baseline full-table aggregate: {base * 1000:.0f} ms")
        print(
            f"one controller check, {ROLLOUTS} rollouts x 5 guardrails ({rollout_rows:,} rows "
            f"in rollouts): {seconds * 1000:.0f} ms -> {seconds / base:.1f}x baseline"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
