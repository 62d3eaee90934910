"""Sum of squared costs in the usage rollups, and rollup indexes by experiment.

The rollout controller's COST_PER_CALL guardrail tests a difference of means with the
always-valid test, which needs each arm's cost variance: `cost_sq_sum` gives it from the
rollups as `latency_ms_sq_sum` does for latency. Existing rollup rows are backfilled from
the raw rows (hours), then days from hours and weeks from days, inside the database.

The controller reads one experiment (rollout) at a time: the indexes (experiment_id,
period_seconds, bucket_start) let it read that rollout's rollup rows only, instead of every
key's rows in the window. Only new rollup keys touch them (an additive upsert of an
existing row changes no indexed column). For the raw minutes at a window's ends (a rollout
starts at any instant), the usage table's experiment_id index becomes (experiment_id,
created_at): the same number of indexes to maintain on insert, and a rollout's raw rows in
a time range are one index range instead of every row of that range.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DIMENSIONS = ("context", "model_id", "provider", "experiment_id", "variant_id")
INDEXED = (
    ("ix_usage_rollups_experiment", "usage_rollups"),
    ("ix_usage_latency_rollups_experiment", "usage_latency_rollups"),
    ("ix_feedback_rollups_experiment", "feedback_rollups"),
)
INDEX_COLUMNS = ["experiment_id", "period_seconds", "bucket_start"]


def _hour_of(column: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        seconds = f"CAST(floor(extract(epoch FROM {column})) AS BIGINT)"
    else:  # SQLite keeps UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'
        seconds = f"CAST(strftime('%s', substr({column}, 1, 19)) AS BIGINT)"
    return f"(({seconds}) / 3600) * 3600"


def _set_from(period: int, source: str) -> None:
    """cost_sq_sum of the `period` rows := the `square` of the matching `source` row."""
    match = " AND ".join(f"usage_rollups.{d} = s.{d}" for d in (*DIMENSIONS, "outcome"))
    op.execute(
        f"""UPDATE usage_rollups SET cost_sq_sum = s.square FROM ({source}) AS s
        WHERE usage_rollups.period_seconds = {period}
          AND usage_rollups.bucket_start = s.bucket_start AND {match}"""
    )


def _backfill() -> None:
    hour = _hour_of("created_at")
    _set_from(
        3600,
        f"""SELECT {hour} AS bucket_start, context, model_id, provider,
            coalesce(experiment_id, '') AS experiment_id, coalesce(variant_id, '') AS variant_id,
            outcome, sum(CAST(estimated_cost AS FLOAT) * estimated_cost) AS square
        FROM llm_usage_logs
        GROUP BY {hour}, context, model_id, provider, coalesce(experiment_id, ''),
            coalesce(variant_id, ''), outcome""",
    )
    keys = ", ".join((*DIMENSIONS, "outcome"))
    for coarse, fine in ((86_400, 3600), (7 * 86_400, 86_400)):
        start = f"(bucket_start / {coarse}) * {coarse}"
        _set_from(
            coarse,
            f"""SELECT {start} AS bucket_start, {keys}, sum(cost_sq_sum) AS square
            FROM usage_rollups WHERE period_seconds = {fine} GROUP BY {start}, {keys}""",
        )


def upgrade() -> None:
    op.add_column(
        "usage_rollups",
        sa.Column("cost_sq_sum", sa.Float(), nullable=False, server_default="0"),
    )
    _backfill()
    for name, table in INDEXED:
        op.create_index(name, table, INDEX_COLUMNS)
    op.create_index(
        "ix_llm_usage_logs_experiment_id_created_at",
        "llm_usage_logs",
        ["experiment_id", "created_at"],
    )
    op.drop_index("ix_llm_usage_logs_experiment_id", table_name="llm_usage_logs")


def downgrade() -> None:
    op.create_index("ix_llm_usage_logs_experiment_id", "llm_usage_logs", ["experiment_id"])
    op.drop_index("ix_llm_usage_logs_experiment_id_created_at", table_name="llm_usage_logs")
    for name, table in INDEXED:
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("usage_rollups") as batch:
        batch.drop_column("cost_sq_sum")
