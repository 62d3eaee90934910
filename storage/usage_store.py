"""Usage rows: idempotent batch inserts into `llm_usage_logs`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelroute.storage.tables import LlmUsageLog
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

_table = LlmUsageLog.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    report_id: str
    decision_id: str | None
    context: str
    model_id: str
    provider: str
    outcome: str
    user_id: str | None
    tier: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: int
    estimated_cost: float
    error_message: str | None
    retry_after_ms: int | None
    experiment_id: str | None
    variant_id: str | None
    reason: str | None
    config_revision: int
    trace_id: str | None
    created_at: datetime


_FIELDS = [f.name for f in dataclasses.fields(UsageRecord)]


class UsageStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        self._insert: Any = (postgresql if dialect == "postgresql" else sqlite).insert

    def insert_batch(self, records: Sequence[UsageRecord]) -> list[bool]:
        """Insert in ONE transaction. Per record: True if stored now, False if its report_id
        already existed (in the table or earlier in this batch)."""
        first_index: dict[str, int] = {}
        for index, record in enumerate(records):
            first_index.setdefault(record.report_id, index)
        rows = [dataclasses.asdict(records[i]) for i in first_index.values()]
        inserted: set[str] = set()
        if rows:
            statement = (
                self._insert(_table)
                .on_conflict_do_nothing(index_elements=["report_id"])
                .returning(_table.c.report_id)
            )
            with self.engine.begin() as connection:
                # One multi-row INSERT ... RETURNING per few hundred rows (SQLAlchemy's
                # "insertmanyvalues"), all in one transaction: one fsync for the group.
                result = connection.execute(statement, rows)
                inserted.update(r[0] for r in result)
        return [
            first_index[r.report_id] == i and r.report_id in inserted for i, r in enumerate(records)
        ]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(_table)).scalar_one())

    def get(self, report_id: str) -> UsageRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*[_table.c[name] for name in _FIELDS]).where(_table.c.report_id == report_id)
            ).first()
        return UsageRecord(**row._asdict()) if row else None
