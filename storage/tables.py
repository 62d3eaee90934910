"""SQL tables (SQLModel). The schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class LlmUsageLog(SQLModel, table=True):
    __tablename__ = "llm_usage_logs"
    __table_args__ = (Index("ix_llm_usage_logs_created_at_context", "created_at", "context"),)

    id: int | None = Field(default=None, primary_key=True)
    report_id: str = Field(max_length=128, unique=True)
    decision_id: str | None = Field(default=None, max_length=1024)
    context: str = Field(max_length=128, index=True)
    model_id: str = Field(max_length=128, index=True)
    provider: str = Field(max_length=128)
    outcome: str = Field(max_length=32)
    user_id: str | None = Field(default=None, max_length=256)
    tier: str | None = Field(default=None, max_length=64)
    input_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    latency_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    estimated_cost: float
    error_message: str | None = None
    retry_after_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    experiment_id: str | None = Field(default=None, max_length=128, index=True)
    variant_id: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=32)
    config_revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    trace_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class LlmFeedback(SQLModel, table=True):
    __tablename__ = "llm_feedback"

    id: int | None = Field(default=None, primary_key=True)
    decision_id: str = Field(max_length=1024, index=True)
    thumbs: str | None = Field(default=None, max_length=8)
    quality_score: float | None = None
    source: str = Field(max_length=16)
    comment: str | None = None
    experiment_id: str | None = Field(default=None, max_length=128)
    variant_id: str | None = Field(default=None, max_length=128)
    model_id: str | None = Field(default=None, max_length=128)
    context: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class UserModelPreference(SQLModel, table=True):
    __tablename__ = "user_model_preferences"
    __table_args__ = (UniqueConstraint("user_id", "context"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=256)
    context: str = Field(default="", max_length=128)  # "" = every user-selectable context
    model_id: str = Field(max_length=128)
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class Alert(SQLModel, table=True):
    __tablename__ = "alerts"

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    subject: str = Field(max_length=256)
    message: str
    dedup_key: str = Field(max_length=256, index=True)
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
