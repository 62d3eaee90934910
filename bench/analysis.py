"""Analysis queries on 1,000,000 usage rows (SQLite file; PostgreSQL with
MODELROUTE_BENCH_DATABASE_URL). Each query's time is printed with its ratio to a baseline
measured on the same table in the same run: one full-table aggregate
(`SELECT count(*), sum(estimated_cost)`), the cheapest query that reads every row.
Run: `.venv/bin/python bench/analysis.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.server.usage.analysis import experiment_results
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.tables import LlmUsageLog
from sqlalchemy import insert, text

MODELS = [
    ("gemini-3-flash-preview", "google"),
    ("gemini-3-pro-preview", "google"),
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-sonnet", "anthropic"),
]
CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "example_miner"]
END = datetime(2026, 11, 25, tzinfo=UTC)


def fill(url: str, rows: int) -> None:
    engine = create_engine_for(url)
    rng = random.Random(1)
    table = LlmUsageLog.__table__  # type: ignore[attr-defined]
    chunk = 50_000
    with engine.begin() as connection:
        for start in range(0, rows, chunk):
            batch = []
            for n in range(start, min(rows, start + chunk)):
                model, provider = MODELS[n % 5]
                in_experiment = n % 5 == 0
                variant = "b" if rng.random() < 0.5 else "a"
                batch.append(
                    {
                        "report_id": f"r{n}",
                        "context": CONTEXTS[(n // 5) % 5],
                        "model_id": model,
                        "provider": provider,
                        "outcome": "OK" if rng.random() > 0.05 else "TIMEOUT",
                        "user_id": f"user-{rng.randrange(50_000)}",
                        "input_tokens": rng.randrange(100, 4000),
                        "output_tokens": rng.randrange(10, 800),
                        "latency_ms": int(rng.lognormvariate(6, 0.5)),
                        "estimated_cost": rng.random() / 100,
                        "experiment_id": "e1" if in_experiment else None,
                        "variant_id": variant if in_experiment else None,
                        "config_revision": 1,
                        "created_at": END - timedelta(seconds=rng.randrange(30 * 86_400)),
                    }
                )
            connection.execute(insert(table), batch)
    engine.dispose()


def timed(call: Callable[[], object], repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("MODELROUTE_BENCH_DATABASE_URL") or f"sqlite:///{Path(tmp) / 'u.db'}"
        upgrade(url)
        started = time.perf_counter()
        fill(url, args.rows)
        elapsed = time.perf_counter() - started
        print(f"filled {args.rows:,} rows in {elapsed:.1f} s ({url.split(':')[0]})")
        engine = create_engine_for(url)
        store = AnalysisStore(engine)
        values = {f"models/{m}": f'{{"provider": "{p}"}}'.encode() for m, p in MODELS} | {
            "contexts/rag.answer": b'{"model": "gpt-4o"}',
            "experiments/e1": b'{"context": "rag.answer", "enabled": true, "variants": ['
            b'{"id": "a", "model": "gpt-4o", "weight": 50},'
            b'{"id": "b", "model": "gpt-4o-mini", "weight": 50}]}',
        }
        snapshot, rejected = SnapshotBuilder(env_overrides={}).apply(1, values, END)
        assert not rejected, rejected
        experiment = snapshot.experiments["e1"]

        def baseline() -> None:
            with engine.connect() as connection:
                connection.execute(
                    text("SELECT count(*), sum(estimated_cost) FROM llm_usage_logs")
                ).one()

        def results() -> None:
            usage = store.usage("variant", None, None, experiment_id="e1", distinct_users=True)
            feedback = store.feedback_by_variant("e1", None, None)
            experiment_results(experiment, {g.key: g for g in usage}, feedback)

        week = END - timedelta(days=7)
        base = timed(baseline)
        print(f"baseline full-table aggregate: {base * 1000:.0f} ms")
        cases: list[tuple[str, Callable[[], object]]] = [
            ("usage by model (all time)", lambda: store.usage("model", None, None)),
            ("usage by context (all time)", lambda: store.usage("context", None, None)),
            ("usage by provider (all time)", lambda: store.usage("provider", None, None)),
            ("usage by day (all time)", lambda: store.usage("day", None, None)),
            ("usage by model (last 7 days)", lambda: store.usage("model", week, END)),
            ("experiment results (200k rows in the experiment)", results),
        ]
        for name, call in cases:
            seconds = timed(call)
            print(f"{name}: {seconds * 1000:.0f} ms -> {seconds / base:.1f}x baseline")
        engine.dispose()


if __name__ == "__main__":
    main()
