"""SQL tables (SQLModel). The schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """The SQLAlchemy `Table` behind a table model (SQLModel leaves `__table__` untyped)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that always stores and returns aware UTC datetimes.

    SQLite keeps datetimes as text and silently drops the offset, so a non-UTC value
    would be stored as the wrong instant and sort wrongly; normalising to UTC on the
    way in (naive = UTC) and tagging UTC on the way out makes both dialects agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to aware UTC on the way into the database."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Tag UTC on the way out (SQLite returns naive datetimes)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def _big_id() -> Any:
    # BIGSERIAL on PostgreSQL (a usage log can outgrow 2**31 rows); SQLite needs exactly
    # INTEGER PRIMARY KEY for the rowid alias, which is 64-bit anyway.
    return Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )


def _created_at(*, index: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=False, index=index))


def _text(*, nullable: bool) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(Text, nullable=True))
    return Field(sa_column=Column(Text, nullable=False))


class LlmUsageLog(SQLModel, table=True):
    """One usage report (`llm_usage_logs`); `report_id` makes reports idempotent."""

    __tablename__ = "llm_usage_logs"
    __table_args__ = (
        # Named so later (batch-mode, on SQLite) migrations can refer to them.
        UniqueConstraint("report_id", name="uq_llm_usage_logs_report_id"),
        Index("ix_llm_usage_logs_created_at_context", "created_at", "context"),
        # An experiment's (a rollout's) rows in a time range: the raw minutes at the ends of
        # a rollup window (migration 0006; replaced the experiment_id-only index).
        Index("ix_llm_usage_logs_experiment_id_created_at", "experiment_id", "created_at"),
        # The rollout controller's aggregation walks this index in order (migration 0004).
        Index(
            "ix_llm_usage_logs_rollout_arms",
            "experiment_id",
            "variant_id",
            "outcome",
            "latency_ms",
            "created_at",
            "estimated_cost",
            sqlite_where=text("reason = 'ROLLOUT'"),
            postgresql_where=text("reason = 'ROLLOUT'"),
        ),
    )

    id: int | None = _big_id()
    report_id: str = Field(max_length=128)  # the client's idempotency key
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
    estimated_cost: float  # USD
    error_message: str | None = _text(nullable=True)
    retry_after_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    experiment_id: str | None = Field(default=None, max_length=128)
    variant_id: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=32)
    config_revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    trace_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = _created_at(index=True)


class LlmFeedback(SQLModel, table=True):
    """One feedback on a decision (`llm_feedback`)."""

    __tablename__ = "llm_feedback"
    __table_args__ = (
        Index("ix_llm_feedback_experiment_id_variant_id", "experiment_id", "variant_id"),
    )

    id: int | None = _big_id()
    decision_id: str = Field(max_length=1024, index=True)
    thumbs: str | None = Field(default=None, max_length=8)
    quality_score: float | None = None
    source: str = Field(max_length=16)
    comment: str | None = _text(nullable=True)
    experiment_id: str | None = Field(default=None, max_length=128)
    variant_id: str | None = Field(default=None, max_length=128)
    model_id: str | None = Field(default=None, max_length=128)
    context: str | None = Field(default=None, max_length=128)
    created_at: datetime = _created_at()


class UserModelPreference(SQLModel, table=True):
    """A user's preferred model per context (`user_model_preferences`)."""

    __tablename__ = "user_model_preferences"
    __table_args__ = (
        UniqueConstraint("user_id", "context", name="uq_user_model_preferences_user_id_context"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=256)
    # "" rather than NULL for "every context": NULLs never collide in a UNIQUE constraint.
    context: str = Field(default="", max_length=128, sa_column_kwargs={"server_default": ""})
    model_id: str = Field(max_length=128)
    updated_at: datetime = _created_at()


class Alert(SQLModel, table=True):
    """One alert (`alerts`); the id is derived from its de-duplication key."""

    __tablename__ = "alerts"

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    subject: str = Field(max_length=256)
    message: str = _text(nullable=False)
    dedup_key: str = Field(max_length=256, index=True)
    created_at: datetime = _created_at(index=True)


# --- rollups (written by modelroute.storage.rollups, read by analysis_store) ----------------
# Composite primary keys are the rollup keys (additive upserts conflict on them); on SQLite
# the tables are WITHOUT ROWID, so rows are stored in key order and a period's time range
# is one contiguous read. "" (not NULL) stands for "no experiment / variant": NULLs never
# collide in a key. bucket_start is Unix seconds (UTC) of the hour or day.


def _key_text(length: int) -> Any:
    return Field(sa_column=Column(String(length), primary_key=True, nullable=False))


def _key_int() -> Any:
    return Field(sa_column=Column(BigInteger, primary_key=True, nullable=False))


def _count() -> Any:
    return Field(sa_column=Column(BigInteger, nullable=False))


def _amount() -> Any:
    return Field(sa_column=Column(Float, nullable=False))


class UsageRollup(SQLModel, table=True):
    """Usage totals per bucket (hour, day or week) and dimensions (`usage_rollups`)."""

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_experiment", "experiment_id", "period_seconds", "bucket_start"),
        {"sqlite_with_rowid": False},
    )

    period_seconds: int = _key_int()  # 3600 or 86400
    bucket_start: int = _key_int()
    context: str = _key_text(128)
    model_id: str = _key_text(128)
    provider: str = _key_text(128)
    experiment_id: str = _key_text(128)
    variant_id: str = _key_text(128)
    outcome: str = _key_text(32)
    calls: int = _count()
    input_tokens: int = _count()
    output_tokens: int = _count()
    cost_usd: float = _amount()
    latency_ms_sum: int = _count()
    latency_ms_sq_sum: float = _amount()
    cost_sq_sum: float = _amount()  # migration 0006: the cost variance of rollout guardrails


class UsageLatencyRollup(SQLModel, table=True):
    """Latency histogram per rollup bucket (`usage_latency_rollups`)."""

    __tablename__ = "usage_latency_rollups"
    __table_args__ = (
        Index(
            "ix_usage_latency_rollups_experiment", "experiment_id", "period_seconds", "bucket_start"
        ),
        {"sqlite_with_rowid": False},
    )

    period_seconds: int = _key_int()
    bucket_start: int = _key_int()
    context: str = _key_text(128)
    model_id: str = _key_text(128)
    provider: str = _key_text(128)
    experiment_id: str = _key_text(128)
    variant_id: str = _key_text(128)
    latency_bucket: int = _key_int()  # index into rollups.BUCKET_UPPERS
    calls: int = _count()


class UsageLatencyTotal(SQLModel, table=True):
    """Latency histogram per rollup bucket over all dimensions (`usage_latency_totals`,
    migration 0007): what a summary by day with no filter reads, a few hundred rows per day
    instead of every key's (keys x latency buckets, ~50,000 rows for 30 days).
    """

    __tablename__ = "usage_latency_totals"
    __table_args__ = {"sqlite_with_rowid": False}

    period_seconds: int = _key_int()
    bucket_start: int = _key_int()
    latency_bucket: int = _key_int()
    calls: int = _count()


class FeedbackRollup(SQLModel, table=True):
    """Feedback totals per rollup bucket (`feedback_rollups`)."""

    __tablename__ = "feedback_rollups"
    __table_args__ = (
        Index("ix_feedback_rollups_experiment", "experiment_id", "period_seconds", "bucket_start"),
        {"sqlite_with_rowid": False},
    )

    period_seconds: int = _key_int()
    bucket_start: int = _key_int()
    context: str = _key_text(128)
    model_id: str = _key_text(128)
    experiment_id: str = _key_text(128)
    variant_id: str = _key_text(128)
    feedbacks: int = _count()
    scores: int = _count()  # feedback with a quality_score
    score_sum: float = _amount()
    score_sq_sum: float = _amount()
    thumbs: int = _count()
    thumbs_up: int = _count()


class ExperimentUser(SQLModel, table=True):
    """Users seen per experiment variant: assignments counted in users without reading raw rows."""

    __tablename__ = "experiment_users"
    __table_args__ = {"sqlite_with_rowid": False}

    experiment_id: str = _key_text(128)
    variant_id: str = _key_text(128)
    user_id: str = _key_text(256)
    first_seen: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class ExperimentUserCount(SQLModel, table=True):
    """Users seen per experiment variant (`experiment_user_counts`, migration 0007): the
    number of `experiment_users` rows of the variant, kept by the usage writer.
    """

    __tablename__ = "experiment_user_counts"
    __table_args__ = {"sqlite_with_rowid": False}

    experiment_id: str = _key_text(128)
    variant_id: str = _key_text(128)
    users: int = _count()


class ConfigChange(SQLModel, table=True):
    """One decision-shaping key changed at one etcd revision (`config_changes`).

    `value_before` / `value_after` are the raw JSON values (NULL: the key did not exist /
    was deleted), with the secrets of `clients/` values redacted. The row with key ""
    marks where recording started: the state before it is not known.
    """

    __tablename__ = "config_changes"
    __table_args__ = (
        UniqueConstraint("revision", "key", name="uq_config_changes_revision_key"),
        Index("ix_config_changes_key_revision", "key", "revision"),
    )

    id: int | None = _big_id()
    revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    changed_at: datetime = _created_at(index=True)
    key: str = Field(max_length=256)
    value_before: str | None = _text(nullable=True)
    value_after: str | None = _text(nullable=True)
    actor: str = Field(max_length=128)
    note: str | None = _text(nullable=True)
