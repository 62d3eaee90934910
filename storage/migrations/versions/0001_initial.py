"""Initial schema: usage logs, feedback, user preferences, alerts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_usage_logs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("report_id", sa.String(128), nullable=False, unique=True),
        sa.Column("decision_id", sa.String(1024)),
        sa.Column("context", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(256)),
        sa.Column("tier", sa.String(64)),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.BigInteger(), nullable=False),
        sa.Column("estimated_cost", sa.Float(), nullable=False),
        sa.Column("error_message", sa.Text()),
        sa.Column("retry_after_ms", sa.BigInteger()),
        sa.Column("experiment_id", sa.String(128)),
        sa.Column("variant_id", sa.String(128)),
        sa.Column("reason", sa.String(32)),
        sa.Column("config_revision", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_llm_usage_logs_context", "llm_usage_logs", ["context"])
    op.create_index("ix_llm_usage_logs_model_id", "llm_usage_logs", ["model_id"])
    op.create_index("ix_llm_usage_logs_experiment_id", "llm_usage_logs", ["experiment_id"])
    op.create_index("ix_llm_usage_logs_created_at", "llm_usage_logs", ["created_at"])
    op.create_index(
        "ix_llm_usage_logs_created_at_context", "llm_usage_logs", ["created_at", "context"]
    )
    op.create_table(
        "llm_feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("decision_id", sa.String(1024), nullable=False),
        sa.Column("thumbs", sa.String(8)),
        sa.Column("quality_score", sa.Float()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("experiment_id", sa.String(128)),
        sa.Column("variant_id", sa.String(128)),
        sa.Column("model_id", sa.String(128)),
        sa.Column("context", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_llm_feedback_decision_id", "llm_feedback", ["decision_id"])
    op.create_table(
        "user_model_preferences",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("context", sa.String(128), nullable=False, server_default=""),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "context"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alerts_dedup_key", "alerts", ["dedup_key"])
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"])


def downgrade() -> None:
    for table in ("alerts", "user_model_preferences", "llm_feedback", "llm_usage_logs"):
        op.drop_table(table)
