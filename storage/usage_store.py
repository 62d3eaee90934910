"""Usage rows: idempotent batch inserts into `llm_usage_logs`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, func, select

from .bulk_sql import BulkInsertNew, time_binder
from .database import database_call
from .rollups import RollupWriter
from .tables import LlmUsageLog, table_of

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


def _values(r: UsageRecord, bind: Callable[[datetime], Any]) -> tuple[Any, ...]:
    # In _FIELDS order, spelled out: the hot path of ingestion.
    return (
        r.report_id, r.decision_id, r.context, r.model_id, r.provider, r.outcome, r.user_id,
        r.tier, r.input_tokens, r.output_tokens, r.latency_ms, r.estimated_cost,
        r.error_message, r.retry_after_ms, r.experiment_id, r.variant_id, r.reason,
        r.config_revision, r.trace_id, bind(r.created_at),
    )  # fmt: skip


class UsageStore:
    """The `llm_usage_logs` table: idempotent batch inserts and lookups."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = BulkInsertNew(engine, _table, _FIELDS, "report_id")
        self._time = time_binder(engine)
        self._rollups = RollupWriter(engine)

    @database_call
    def insert_batch(self, records: Sequence[UsageRecord]) -> list[bool]:
        """Insert in ONE transaction, with the rows' rollups. Per record, in order: True if
        stored now, False if its report_id already existed (in the table, or earlier in this
        batch). A database failure raises StoreUnavailableError; then nothing is stored.
        """
        first_index: dict[str, int] = {}
        for index, record in enumerate(records):
            first_index.setdefault(record.report_id, index)
        inserted: set[str] = set()
        if first_index:
            bind = self._time
            rows = [_values(records[index], bind) for index in first_index.values()]
            with self.engine.begin() as connection:
                # One transaction (one fsync) for the batch and its rollups.
                inserted = self._insert.run(connection, rows)
                # Rollups from the rows stored now only: a duplicate adds nothing.
                self._rollups.add_usage(
                    connection,
                    [records[i] for i in first_index.values() if records[i].report_id in inserted],
                )
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
