"""Rollup tables (usage, latency histogram, feedback per hour, day and week; experiment users),
backfilled from the raw rows already stored.

Self-contained like the other revisions: the latency buckets are rebuilt here with the same
rule as modelroute.storage.rollups (tests/test_rollups.py checks both give the same rollups).
The backfill is plain INSERT ... SELECT, so it runs inside the database, not row by row
through Python.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DIMENSIONS = ("context", "model_id", "provider", "experiment_id", "variant_id")
EXACT_UP_TO = 50
RELATIVE_ERROR = 0.02
MAX_LATENCY_MS = 86_400_000
TABLES = ("usage_rollups", "usage_latency_rollups", "feedback_rollups", "experiment_users")


def _bucket_uppers() -> list[int]:
    uppers = list(range(EXACT_UP_TO + 1))
    while uppers[-1] < MAX_LATENCY_MS:
        lower = uppers[-1] + 1
        uppers.append(int(lower * (1 + 2 * RELATIVE_ERROR)))
    return uppers


def _bucket_sql(column: str, uppers: list[int], first: int, last: int) -> str:
    """Index of the first upper bound >= column, as a balanced tree of CASEs (a few
    comparisons per row, in SQL both dialects run)."""
    if first == last:
        return str(first)
    middle = (first + last) // 2
    low = _bucket_sql(column, uppers, first, middle)
    high = _bucket_sql(column, uppers, middle + 1, last)
    return f"CASE WHEN {column} <= {uppers[middle]} THEN {low} ELSE {high} END"


def _key_columns(*extra: sa.Column) -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("period_seconds", sa.BigInteger(), primary_key=True, nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), primary_key=True, nullable=False),
        sa.Column("context", sa.String(128), primary_key=True, nullable=False),
        sa.Column("model_id", sa.String(128), primary_key=True, nullable=False),
        *extra,
    ]


def _pk_text(name: str, length: int = 128) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.String(length), primary_key=True, nullable=False)


def _count(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.BigInteger(), nullable=False)


def _amount(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Float(), nullable=False)


def _create_tables() -> None:
    no_rowid = {"sqlite_with_rowid": False}
    op.create_table(
        "usage_rollups",
        *_key_columns(
            _pk_text("provider"), _pk_text("experiment_id"), _pk_text("variant_id"),
            _pk_text("outcome", 32),
        ),
        _count("calls"), _count("input_tokens"), _count("output_tokens"), _amount("cost_usd"),
        _count("latency_ms_sum"), _amount("latency_ms_sq_sum"),
        **no_rowid,
    )
    op.create_table(
        "usage_latency_rollups",
        *_key_columns(
            _pk_text("provider"), _pk_text("experiment_id"), _pk_text("variant_id"),
            sa.Column("latency_bucket", sa.BigInteger(), primary_key=True, nullable=False),
        ),
        _count("calls"),
        **no_rowid,
    )
    op.create_table(
        "feedback_rollups",
        *_key_columns(_pk_text("experiment_id"), _pk_text("variant_id")),
        _count("feedbacks"), _count("scores"), _amount("score_sum"), _amount("score_sq_sum"),
        _count("thumbs"), _count("thumbs_up"),
        **no_rowid,
    )
    op.create_table(
        "experiment_users",
        _pk_text("experiment_id"), _pk_text("variant_id"), _pk_text("user_id", 256),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        **no_rowid,
    )


def _hour_of(column: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        seconds = f"CAST(floor(extract(epoch FROM {column})) AS BIGINT)"
    else:  # SQLite keeps UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'
        seconds = f"CAST(strftime('%s', substr({column}, 1, 19)) AS BIGINT)"
    return f"(({seconds}) / 3600) * 3600"


def _backfill() -> None:
    hour = _hour_of("created_at")
    dims = "context, model_id, provider, coalesce(experiment_id, ''), coalesce(variant_id, '')"
    uppers = _bucket_uppers()
    bucket = _bucket_sql("latency_ms", uppers, 0, len(uppers) - 1)
    op.execute(
        f"""INSERT INTO usage_rollups (period_seconds, bucket_start, {", ".join(DIMENSIONS)},
            outcome, calls, input_tokens, output_tokens, cost_usd, latency_ms_sum,
            latency_ms_sq_sum)
        SELECT 3600, {hour}, {dims}, outcome, count(*), sum(input_tokens), sum(output_tokens),
            sum(estimated_cost), sum(latency_ms), sum(CAST(latency_ms AS FLOAT) * latency_ms)
        FROM llm_usage_logs GROUP BY {hour}, {dims}, outcome"""
    )
    op.execute(
        f"""INSERT INTO usage_latency_rollups (period_seconds, bucket_start,
            {", ".join(DIMENSIONS)}, latency_bucket, calls)
        SELECT 3600, {hour}, {dims}, {bucket}, count(*)
        FROM llm_usage_logs GROUP BY {hour}, {dims}, {bucket}"""
    )
    feedback_dims = "coalesce(context, ''), coalesce(model_id, ''), " + (
        "coalesce(experiment_id, ''), coalesce(variant_id, '')"
    )
    op.execute(
        f"""INSERT INTO feedback_rollups (period_seconds, bucket_start, context, model_id,
            experiment_id, variant_id, feedbacks, scores, score_sum, score_sq_sum, thumbs,
            thumbs_up)
        SELECT 3600, {hour}, {feedback_dims}, count(*), count(quality_score),
            coalesce(sum(quality_score), 0), coalesce(sum(quality_score * quality_score), 0),
            count(thumbs), sum(CASE WHEN thumbs = 'UP' THEN 1 ELSE 0 END)
        FROM llm_feedback GROUP BY {hour}, {feedback_dims}"""
    )
    # Days from hours, weeks (from the epoch) from days: the same sums, fewer rows to read.
    for coarse, fine in ((86_400, 3600), (7 * 86_400, 86_400)):
        _roll_up(coarse, fine)


def _roll_up(coarse: int, fine: int) -> None:
    start = f"(bucket_start / {coarse}) * {coarse}"
    for table, key, sums in (
        ("usage_rollups", "outcome", ("calls", "input_tokens", "output_tokens", "cost_usd",
                                      "latency_ms_sum", "latency_ms_sq_sum")),
        ("usage_latency_rollups", "latency_bucket", ("calls",)),
        ("feedback_rollups", None, ("feedbacks", "scores", "score_sum", "score_sq_sum",
                                    "thumbs", "thumbs_up")),
    ):
        keys = (", ".join(DIMENSIONS) if table != "feedback_rollups"
                else "context, model_id, experiment_id, variant_id")
        if key:
            keys += f", {key}"
        op.execute(
            f"""INSERT INTO {table} (period_seconds, bucket_start, {keys}, {", ".join(sums)})
            SELECT {coarse}, {start}, {keys}, {", ".join(f"sum({s})" for s in sums)}
            FROM {table} WHERE period_seconds = {fine} GROUP BY {start}, {keys}"""
        )


def _experiment_users() -> None:
    op.execute(
        """INSERT INTO experiment_users (experiment_id, variant_id, user_id, first_seen,
            last_seen)
        SELECT experiment_id, variant_id, user_id, min(created_at), max(created_at)
        FROM llm_usage_logs
        WHERE experiment_id <> '' AND variant_id <> '' AND user_id <> ''
        GROUP BY experiment_id, variant_id, user_id"""
    )


def upgrade() -> None:
    _create_tables()
    _backfill()
    _experiment_users()
    if op.get_bind().dialect.name == "postgresql":
        # Every commit rewrites the current hour's, day's and week's rows (additive upserts):
        # free room on each page lets PostgreSQL update them in place (HOT) instead of adding
        # a new entry to the wide primary-key index for every update.
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 70)")
            # Statistics now, not at the next autovacuum: without them the planner may scan
            # every period's rows for a query that wants one period's range.
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
