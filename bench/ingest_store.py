"""The usage writer alone: UsageStore.insert_batch (raw rows + every rollup, one
transaction per batch) on a SQLite file, without gRPC or spans, so a change to the rollups'
write path shows in its CPU per 1,000 reports rather than in the noise of the full server.

Batches of 3,000 reports (what one group commit carries at 32 senders in bench/ingest.py),
traffic as there (5 contexts, 4 models, ~5% errors, log-normal latencies, 50,000 users) plus
a share of reports in a 2-variant experiment (`--experiment-share`, default 0.2), which
exercises the per-user rollups that bench/ingest.py's traffic never reaches.

Run: `.venv/bin/python bench/ingest_store.py` (`--batches 40 --experiment-share 0.2`).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.usage_store import UsageRecord, UsageStore

MODELS = ["gemini-3-flash-preview", "gemini-3-pro-preview", "gpt-4o", "gpt-4o-mini"]
CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "example_miner"]
BATCH = 3_000
GOAL = 10_000
START = datetime(2026, 11, 24, tzinfo=UTC)


def batch(rng: random.Random, number: int, experiment_share: float) -> list[UsageRecord]:
    records = []
    for k in range(BATCH):
        in_experiment = rng.random() < experiment_share
        records.append(
            UsageRecord(
                report_id=f"r{number}-{k}",
                decision_id=None,
                context=CONTEXTS[rng.randrange(5)],
                model_id=MODELS[rng.randrange(4)],
                provider="provider",
                outcome="OK" if rng.random() > 0.05 else "TIMEOUT",
                user_id=f"user-{rng.randrange(50_000)}",
                tier=None,
                input_tokens=rng.randrange(100, 4000),
                output_tokens=rng.randrange(10, 800),
                latency_ms=int(rng.lognormvariate(6, 0.5)),
                estimated_cost=rng.random() / 100,
                error_message=None,
                retry_after_ms=None,
                experiment_id="e1" if in_experiment else None,
                variant_id=rng.choice("ab") if in_experiment else None,
                reason=None,
                config_revision=1,
                trace_id=None,
                # 3,000 reports per 0.3 s: the rate of the goal, in time order.
                created_at=START + timedelta(seconds=number * 0.3 + k * 0.0001),
            )
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--experiment-share", type=float, default=0.2)
    args = parser.parse_args()
    rng = random.Random(1)
    warm_up = 3
    batches = [batch(rng, n, args.experiment_share) for n in range(args.batches + warm_up)]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/usage.db"
        upgrade(url)
        engine = create_engine_for(url)
        store = UsageStore(engine)
        for records in batches[:warm_up]:
            store.insert_batch(records)
        cpu, wall = time.process_time(), time.perf_counter()
        for records in batches[warm_up:]:
            store.insert_batch(records)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        engine.dispose()
    reports = BATCH * args.batches
    print(
        f"UsageStore.insert_batch (sqlite, batches of {BATCH:,}, {args.experiment_share:.0%} in"
        f" an experiment): {reports / wall:,.0f} reports/s -> {reports / wall / GOAL:.1f}x the"
        f" server's goal of {GOAL:,}/s; CPU per 1,000 reports {cpu / reports * 1e6:.1f} ms"
    )


if __name__ == "__main__":
    main()
