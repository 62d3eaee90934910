"""Impact preview (`config apply --impact`, PreviewConfigChange) over 1,000,000 recorded
usage rows (appended in time order, as the usage writer does), all inside the replayed
window (SQLite file; PostgreSQL with MODELROUTE_BENCH_DATABASE_URL). Goal: <= 10 s.

Printed beside it, measured in the same run: the baseline full-table aggregate
(`SELECT count(*), sum(input_tokens)`, the cheapest query that reads every row) and a naive
row-by-row replay (two resolver calls per row, no grouping) on a sample, extrapolated.
Run: `.venv/bin/python bench/impact_preview.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelroute.server.api.config_apply import load_config_file
from modelroute.server.api.impact_preview import usage_groups
from modelroute.server.core.impact import replay, user_independent
from modelroute.server.core.resolver import ResolveInput
from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.storage.database import create_engine_for, upgrade
from modelroute.storage.replay_store import all_preferences
from modelroute.storage.tables import LlmUsageLog, UserModelPreference
from sqlalchemy import insert, text

MODELS = [
    ("gemini-3-flash-preview", "google"),
    ("gemini-3-pro-preview", "google"),
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-sonnet", "anthropic"),
]
CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "example_miner"]
BOOTSTRAP = Path(__file__).resolve().parent.parent / "config" / "bootstrap.yaml"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
EXPERIMENT = {
    "context": "rag.answer",
    "enabled": True,
    "variants": [
        {"id": "a", "model": "gemini-3-flash-preview", "weight": 50},
        {"id": "b", "model": "gpt-4o-mini", "weight": 50},
    ],
}
PROPOSED = {
    "experiments/e1": {**EXPERIMENT, "variants": [
        {"id": "a", "model": "gemini-3-flash-preview", "weight": 80},
        {"id": "b", "model": "gpt-4o-mini", "weight": 20}]},
    "contexts/reranker": {"model": "gpt-4o", "fallbacks": ["gemini-3-flash-preview"]},
    "models/gpt-4o-mini": {"provider": "openai", "tiers": ["free", "premium"],
                           "input_usd_per_mtok": 0.3, "output_usd_per_mtok": 1.2},
}  # fmt: skip


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
                batch.append(
                    {
                        "report_id": f"r{n}",
                        "context": CONTEXTS[(n // 5) % 5],
                        "model_id": model,
                        "provider": provider,
                        "outcome": "OK",
                        "user_id": None if n % 50 == 0 else f"user-{rng.randrange(50_000)}",
                        "tier": "premium" if n % 3 == 0 else "free",
                        "input_tokens": rng.randrange(100, 4000),
                        "output_tokens": rng.randrange(10, 800),
                        "latency_ms": 100,
                        "estimated_cost": 0.0,
                        "config_revision": 1,
                        # Rows arrive in time order (the usage writer appends as reports
                        # come in), spread over the last ~24 h.
                        "created_at": NOW - timedelta(seconds=86_000 * (1 - n / rows) + 1),
                    }
                )
            connection.execute(insert(table), batch)
        prefs = UserModelPreference.__table__  # type: ignore[attr-defined]
        connection.execute(
            insert(prefs),
            [
                {"user_id": f"user-{u}", "context": "", "model_id": "gpt-4o", "updated_at": NOW}
                for u in range(0, 50_000, 10)
            ],
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-sample", type=int, default=50_000)
    parser.add_argument("--keep", type=Path, help="SQLite file to fill once and reuse")
    args = parser.parse_args()
    current = dict(load_config_file(BOOTSTRAP))
    current["experiments/e1"] = json.dumps(EXPERIMENT).encode()
    builder = SnapshotBuilder()
    before, rejected = builder.apply(1, current, NOW, full_state=True)
    assert not rejected, rejected
    after, rejected = builder.apply(
        2, {k: json.dumps(v).encode() for k, v in PROPOSED.items()}, NOW
    )
    assert not rejected, rejected
    with tempfile.TemporaryDirectory() as tmp:
        database = args.keep or Path(tmp) / "u.db"
        url = os.environ.get("MODELROUTE_BENCH_DATABASE_URL") or f"sqlite:///{database}"
        reuse = args.keep is not None and args.keep.exists()
        upgrade(url)
        if not reuse:
            started = time.perf_counter()
            fill(url, args.rows)
            print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        engine = create_engine_for(url)

        started = time.perf_counter()
        with engine.connect() as connection:
            connection.execute(text("SELECT count(*), sum(input_tokens) FROM llm_usage_logs")).one()
        baseline = time.perf_counter() - started
        print(f"baseline full-table aggregate: {baseline:.2f} s")

        start = NOW - timedelta(hours=24)
        started = time.perf_counter()
        groups = usage_groups(engine, start, NOW, user_independent(before, after))
        preferences = all_preferences(engine)
        read = time.perf_counter() - started
        impacts = replay(groups, before, after, NOW, preferences)
        total = time.perf_counter() - started
        calls = sum(i.calls for i in impacts.values())
        assert calls == args.rows, (calls, args.rows)
        print(
            f"preview over {calls:,} rows ({len(groups):,} (context, user, tier) groups): "
            f"{total:.2f} s (SQL grouping {read:.2f} s, replay {total - read:.2f} s) -> "
            f"{total / baseline:.1f}x baseline; goal <= 10 s: {'met' if total <= 10 else 'NOT met'}"
        )
        for context, impact in sorted(impacts.items()):
            print(f"  {context}: {impact.changed_share:.1%} of {impact.calls:,} calls change model")

        from modelroute.server.core.impact import outcome_of

        sample = []
        with engine.connect() as connection:
            for row in connection.execute(
                text("SELECT context, user_id, tier FROM llm_usage_logs LIMIT :n"),
                {"n": args.naive_sample},
            ):
                sample.append(row)
        started = time.perf_counter()
        for context, user, tier in sample:
            chosen = (preferences.get(user) or {}).get("") if user else None
            request = ResolveInput(context=context, user_id=user or "", tier=tier or "",
                                   preferred_model=chosen)  # fmt: skip
            outcome_of(before, request, NOW)
            outcome_of(after, request, NOW)
        naive = (time.perf_counter() - started) / len(sample) * args.rows
        print(
            f"naive row-by-row replay (extrapolated from {len(sample):,} rows): {naive:.1f} s "
            f"-> preview is {naive / total:.1f}x faster"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
