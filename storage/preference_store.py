"""`user_model_preferences` and `llm_feedback`: small synchronous stores (called in a thread).

Preferences are keyed by (user_id, context), `""` meaning every user-selectable context;
`set` is an upsert, so concurrent sets from two replicas leave exactly one row (last wins).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Engine

from .database import database_call, dialect_insert
from .rollups import RollupWriter
from .tables import LlmFeedback, UserModelPreference, table_of

_preferences: Table = table_of(UserModelPreference)
_feedback: Table = table_of(LlmFeedback)


@dataclass(frozen=True, slots=True)
class StoredPreference:
    """A user's chosen model for one context (empty context: all contexts)."""

    user_id: str
    context: str  # "" = every user-selectable context
    model_id: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One row of `llm_feedback`."""

    decision_id: str
    thumbs: str | None  # "UP" / "DOWN"
    quality_score: float | None
    source: str  # USER / REVIEWER
    comment: str | None
    experiment_id: str | None
    variant_id: str | None
    model_id: str
    context: str
    created_at: datetime


class PreferenceStore:
    """The `user_model_preferences` table: the record of users' model choices."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        upsert = dialect_insert(engine, _preferences)
        self._upsert = upsert.on_conflict_do_update(
            index_elements=["user_id", "context"],
            set_={"model_id": upsert.excluded.model_id, "updated_at": upsert.excluded.updated_at},
        )

    @database_call
    def for_user(self, user_id: str) -> dict[str, StoredPreference]:
        """All of a user's preferences by context (one query: the cache holds users)."""
        query = select(
            _preferences.c.user_id,
            _preferences.c.context,
            _preferences.c.model_id,
            _preferences.c.updated_at,
        ).where(_preferences.c.user_id == user_id)
        with self.engine.connect() as connection:
            return {row[1]: StoredPreference(*row) for row in connection.execute(query)}

    @database_call
    def set(self, preference: StoredPreference) -> None:
        """Insert or replace the user's preference for its context."""
        row = {
            "user_id": preference.user_id,
            "context": preference.context,
            "model_id": preference.model_id,
            "updated_at": preference.updated_at,
        }
        with self.engine.begin() as connection:
            connection.execute(self._upsert, row)


class FeedbackStore:
    """The `llm_feedback` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rollups = RollupWriter(engine)

    @database_call
    def insert(self, record: FeedbackRecord) -> int:
        """Store one feedback row; returns its id."""
        row = {
            "decision_id": record.decision_id,
            "thumbs": record.thumbs,
            "quality_score": record.quality_score,
            "source": record.source,
            "comment": record.comment,
            "experiment_id": record.experiment_id,
            "variant_id": record.variant_id,
            "model_id": record.model_id,
            "context": record.context,
            "created_at": record.created_at,
        }
        with self.engine.begin() as connection:
            result = connection.execute(insert(_feedback).returning(_feedback.c.id), row)
            feedback_id = int(result.scalar_one())
            self._rollups.add_feedback(connection, [record])  # same transaction as the row
            return feedback_id
