"""Totals that spare two summaries one row per key or per user, backfilled from the rollups
already stored:

- `usage_latency_totals`: the latency histogram per rollup bucket summed over every
  dimension. A summary by day without a filter (GetUsageSummary by day, the dashboard's
  daily chart) needs each day's percentiles over every call, yet read every key's histogram
  rows: (contexts x models x providers x variants) x latency buckets per day, ~50,000 rows
  for 30 days at the benchmark's traffic whatever the row count. Now a few hundred a day.
- `experiment_user_counts`: users per (experiment, variant), i.e. the number of
  `experiment_users` rows, so an experiment's results over all time count assignments in
  users without reading one row per user (100,000 rows for 50,000 users in two variants).

The usage writer keeps both in the same transaction as the raw rows, like the other
rollups. The backfill sums `usage_latency_rollups` (every period: hours, days, weeks) and
counts `experiment_users`, inside the database, so it equals what live writing adds
(tests/test_rollups.py checks both).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("usage_latency_totals", "experiment_user_counts")


def upgrade() -> None:
    op.create_table(
        "usage_latency_totals",
        sa.Column("period_seconds", sa.BigInteger(), primary_key=True, nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), primary_key=True, nullable=False),
        sa.Column("latency_bucket", sa.BigInteger(), primary_key=True, nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        """INSERT INTO usage_latency_totals (period_seconds, bucket_start, latency_bucket, calls)
        SELECT period_seconds, bucket_start, latency_bucket, sum(calls)
        FROM usage_latency_rollups GROUP BY period_seconds, bucket_start, latency_bucket"""
    )
    op.create_table(
        "experiment_user_counts",
        sa.Column("experiment_id", sa.String(128), primary_key=True, nullable=False),
        sa.Column("variant_id", sa.String(128), primary_key=True, nullable=False),
        sa.Column("users", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        """INSERT INTO experiment_user_counts (experiment_id, variant_id, users)
        SELECT experiment_id, variant_id, count(*) FROM experiment_users
        GROUP BY experiment_id, variant_id"""
    )
    if op.get_bind().dialect.name == "postgresql":
        # As for the other rollups (0005): room for in-place (HOT) additive updates, and
        # statistics now rather than at the next autovacuum.
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 70)")
            op.execute(f"ANALYZE {table}")
        # The raw rows' statistics too (a sample, about a second at 10M rows): the window
        # ends read them by created_at range, and right after a bulk load, before
        # autovacuum's analyze, the planner may not pick that index.
        op.execute("ANALYZE llm_usage_logs")
        op.execute("ANALYZE llm_feedback")


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
