"""Index feedback by experiment and variant (GetExperimentResults filters on it).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_llm_feedback_experiment_id_variant_id",
        "llm_feedback",
        ["experiment_id", "variant_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_llm_feedback_experiment_id_variant_id", table_name="llm_feedback")
