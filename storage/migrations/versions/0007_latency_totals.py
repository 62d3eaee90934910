"""Latency histogram over all dimensions per rollup bucket (`usage_latency_totals`),
backfilled from the per-key histogram rows already stored.

A summary by day without a filter (GetUsageSummary by day, the dashboard's daily chart)
needs each day's percentiles over every call, yet read every key's histogram rows: about
(contexts x models x providers x variants) x latency buckets per day, ~50,000 rows for
30 days at this project's benchmark traffic, whatever the row count. This table holds the
same histogram summed over the keys: a few hundred rows per day. The usage writer keeps it
in the same transaction as the raw rows, like the other rollups.

The backfill sums `usage_latency_rollups` (every period: hours, days, weeks), so it runs
in the database and equals what live writing adds (tests/test_rollups.py checks both).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


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
    if op.get_bind().dialect.name == "postgresql":
        # As for the other rollups (0005): room for in-place (HOT) additive updates, and
        # statistics now rather than at the next autovacuum.
        op.execute("ALTER TABLE usage_latency_totals SET (fillfactor = 70)")
        op.execute("ANALYZE usage_latency_totals")


def downgrade() -> None:
    op.drop_table("usage_latency_totals")
