"""History of config changes: one row per (etcd revision, key), written by whichever
replica sees the change first (the unique constraint makes the others' inserts no-ops).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_changes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
        ),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("value_before", sa.Text(), nullable=True),
        sa.Column("value_after", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.UniqueConstraint("revision", "key", name="uq_config_changes_revision_key"),
    )
    op.create_index("ix_config_changes_key_revision", "config_changes", ["key", "revision"])
    op.create_index("ix_config_changes_changed_at", "config_changes", ["changed_at"])


def downgrade() -> None:
    op.drop_index("ix_config_changes_changed_at", table_name="config_changes")
    op.drop_index("ix_config_changes_key_revision", table_name="config_changes")
    op.drop_table("config_changes")
