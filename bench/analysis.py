"""Summaries over 1,000,000 and 10,000,000 usage rows (SQLite file; PostgreSQL with
MODELROUTE_BENCH_DATABASE_URL=postgresql://...: a fresh database per size, dropped after).

For each size: schema at revision 0004 (before rollups), raw rows generated inside the
database by one INSERT ... SELECT per million rows (30 days, 5 models, 5 contexts,
3 providers, 5% errors, 50,000 users, a 2-variant experiment on 20% of the rows, feedback
on 1%), then `upgrade()` to head, which creates the rollups and backfills them from the raw
rows (the migration path a deployment takes; timed). Every summary then runs `--repeat`
times (median). Goals, per summary: <= 100 ms at 10M rows, and <= 1.5x its own 1M-row time
measured in the same run.

Run: `.venv/bin/python bench/analysis.py` (defaults: --rows 1000000 10000000 --repeat 5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.server.usage.analysis import experiment_results
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.arm_stats import arm_stats
from modelroute.storage.database import MIGRATIONS_DIR, create_engine_for, normalise_url, upgrade
from sqlalchemy import Engine, create_engine, text

MODELS = [
    ("gemini-3-flash-preview", "google"),
    ("gemini-3-pro-preview", "google"),
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-sonnet", "anthropic"),
]
CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "example_miner"]
END = datetime(2026, 11, 25, tzinfo=UTC)
RAG = "rag.answer"
DAYS = 30
CHUNK = 1_000_000
GOAL_MS = 100.0
GOAL_RATIO = 1.5


def _case(expression: str, values: list[str]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"CASE {expression} {whens} END"


def fill_sql(postgres: bool, table: str) -> str:
    """One INSERT ... SELECT for rows [:start, :end), in time order (an append, like live
    traffic). Latency: 100-1,050 ms, skewed low (a product of two uniforms)."""
    if postgres:
        series = "generate_series(CAST(:start AS BIGINT), CAST(:end AS BIGINT) - 1) AS s(n)"

        def rand(k: int) -> str:
            return f"CAST(floor(random() * {k}) AS BIGINT)"

        moment = "to_timestamp(:t0 + n * :step)"
        source = f"FROM {series}"
        prefix = ""
    else:

        def rand(k: int) -> str:
            return f"(abs(random()) % {k})"

        moment = "strftime('%Y-%m-%d %H:%M:%S', :t0 + n * :step, 'unixepoch') || '.000000'"
        prefix = (
            "WITH RECURSIVE seq(n) AS (SELECT :start UNION ALL SELECT n + 1 FROM seq"
            " WHERE n < :end - 1) "
        )
        source = "FROM seq"
    model = _case("n % 5", [m for m, _ in MODELS])
    provider = _case("n % 5", [p for _, p in MODELS])
    context = _case("(n / 5) % 5", CONTEXTS)
    variant = f"CASE WHEN n % 5 = 0 THEN (CASE WHEN {rand(2)} = 0 THEN 'a' ELSE 'b' END) END"
    if table == "llm_usage_logs":
        return (
            f"{prefix}INSERT INTO llm_usage_logs (report_id, context, model_id, provider,"
            " outcome, user_id, input_tokens, output_tokens, latency_ms, estimated_cost,"
            " experiment_id, variant_id, config_revision, created_at)"
            f" SELECT 'r' || n, {context}, {model}, {provider},"
            f" CASE WHEN {rand(100)} < 5 THEN 'TIMEOUT' ELSE 'OK' END,"
            f" 'user-' || {rand(50_000)}, 100 + {rand(3900)}, 10 + {rand(790)},"
            f" 100 + {rand(900)} * {rand(900)} / 900 + {rand(50)},"
            f" {rand(10_000)} / 1000000.0,"
            f" CASE WHEN n % 5 = 0 THEN 'e1' END, {variant}, 1, {moment} {source}"
        )
    return (
        f"{prefix}INSERT INTO llm_feedback (decision_id, thumbs, quality_score, source,"
        " experiment_id, variant_id, model_id, context, created_at)"
        f" SELECT 'd' || n, CASE WHEN {rand(3)} = 0 THEN 'UP' ELSE 'DOWN' END,"
        f" {rand(1000)} / 1000.0, 'USER', CASE WHEN n % 5 = 0 THEN 'e1' END, {variant},"
        f" {model}, {context}, {moment} {source} WHERE n % 100 = 0"
    )


def build(url: str, rows: int) -> float:
    """Raw rows at revision 0004, then upgrade() (rollups created and backfilled); returns
    the backfill's seconds."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine_for(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    postgres = engine.dialect.name == "postgresql"
    step = DAYS * 86_400 / rows
    t0 = (END - timedelta(days=DAYS)).timestamp()
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        params = {"start": start, "end": min(rows, start + CHUNK), "t0": t0, "step": step}
        with engine.begin() as connection:
            connection.execute(text(fill_sql(postgres, "llm_usage_logs")), params)
            connection.execute(text(fill_sql(postgres, "llm_feedback")), params)
    print(f"  {rows:,} raw rows generated in {time.perf_counter() - started:.0f} s")
    engine.dispose()
    started = time.perf_counter()
    upgrade(url)
    backfill = time.perf_counter() - started
    print(f"  migrations 0005-0007 (rollups created + backfilled) took {backfill:.0f} s")
    return backfill


def timed(call: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def cases(engine: Engine) -> list[tuple[str, Callable[[], object]]]:
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

    def results() -> None:
        usage = store.usage("variant", None, None, experiment_id="e1", distinct_users=True)
        feedback = store.feedback_by_variant("e1", None, None)
        experiment_results(experiment, {g.key: g for g in usage}, feedback)

    week = END - timedelta(days=7)
    # Not on hour boundaries: both ends read raw rows (at most an hour each).
    day_start = END - timedelta(hours=24, minutes=17, seconds=3)
    day_end = END - timedelta(minutes=17, seconds=3)
    return [
        ("usage by model, all time", lambda: store.usage("model", None, None)),
        ("usage by context, all time", lambda: store.usage("context", None, None)),
        ("usage by provider, all time", lambda: store.usage("provider", None, None)),
        ("usage by day, all time", lambda: store.usage("day", None, None)),
        ("usage by model, last 7 days", lambda: store.usage("model", week, END)),
        ("usage by model, 24 h off hour bounds", lambda: store.usage("model", day_start, day_end)),
        ("experiment results (users, feedback, tests)", results),
        ("arm stats, one context, last 7 days", lambda: arm_stats(store, week, END, context=RAG)),
    ]  # fmt: skip


def database_for(server: str | None, tmp: Path, rows: int) -> tuple[str, Callable[[], None]]:
    if not server:
        return f"sqlite:///{tmp / f'u{rows}.db'}", lambda: None
    name = f"mrbench_{rows}"
    admin = create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return normalise_url(server).rsplit("/", 1)[0] + f"/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = os.environ.get("MODELROUTE_BENCH_DATABASE_URL")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            url, drop = database_for(server, Path(tmp), rows)
            print(f"{rows:,} rows ({url.split(':')[0].split('+')[0]}):")
            try:
                build(url, rows)
                engine = create_engine_for(url)
                results[rows] = {}
                for name, call in cases(engine):
                    results[rows][name] = seconds = timed(call, args.repeat)
                    print(f"  {name}: {seconds * 1000:.1f} ms")
                engine.dispose()
            finally:
                drop()
                Path(tmp, f"u{rows}.db").unlink(missing_ok=True)
    small, large = min(results), max(results)
    print(
        f"\nsummary: {large:,} rows vs {small:,} rows"
        f" (goal <= {GOAL_MS:.0f} ms and <= {GOAL_RATIO}x)"
    )
    for name, seconds in results[large].items():
        ratio = seconds / results[small][name]
        met = seconds * 1000 <= GOAL_MS and ratio <= GOAL_RATIO
        print(
            f"  {name}: {seconds * 1000:.1f} ms vs {results[small][name] * 1000:.1f} ms"
            f" -> {ratio:.2f}x {'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
