"""Usage rows: idempotent batch inserts into `llm_usage_logs`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelroute.storage.database import database_call, dialect_insert
from modelroute.storage.tables import LlmUsageLog, table_of
from sqlalchemy import Engine, Table, func, select

_table: Table = table_of(LlmUsageLog)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One row of `llm_usage_logs` (without the surrogate id)."""

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


_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRecord))
_COLUMNS = tuple(_table.c[name] for name in _FIELDS)


def _row(record: UsageRecord) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value and is ~20x slower per row.
    return {name: getattr(record, name) for name in _FIELDS}


class UsageStore:
    """The `llm_usage_logs` table: idempotent batch inserts and lookups."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statement = (
            dialect_insert(engine, _table)
            .on_conflict_do_nothing(index_elements=["report_id"])
            .returning(_table.c.report_id)
        )

    @database_call
    def insert_batch(self, records: Sequence[UsageRecord]) -> list[bool]:
        """Insert in ONE transaction.

        Per record, in order: True if stored now, False if its report_id already existed (in
        the table, or earlier in this batch). Database errors propagate unchanged; then
        nothing from the batch is stored.
        """
        first_index: dict[str, int] = {}
        for index, record in enumerate(records):
            first_index.setdefault(record.report_id, index)
        inserted: set[str] = set()
        if first_index:
            rows = [_row(records[index]) for index in first_index.values()]
            with self.engine.begin() as connection:
                # executemany + RETURNING runs as multi-row INSERTs (SQLAlchemy's
                # "insertmanyvalues"), all in this one transaction: one fsync per batch.
                result = connection.execute(self._statement, rows)
                inserted.update(result.scalars())
        return [
            first_index[record.report_id] == index and record.report_id in inserted
            for index, record in enumerate(records)
        ]

    @database_call
    def count(self) -> int:
        """How many usage rows are stored."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(_table)).scalar_one())

    @database_call
    def get(self, report_id: str) -> UsageRecord | None:
        """The stored report with this id, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(*_COLUMNS).where(_table.c.report_id == report_id)
            ).first()
        return None if row is None else UsageRecord(*row)
