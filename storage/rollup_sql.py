"""SQL pieces shared by the summary queries: a window's rollup ranges as a WHERE clause and
the sign each row counts with, group keys over rollup and raw rows, and result keys.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Table, and_, case, false, func, literal, or_
from sqlalchemy.sql.elements import ColumnElement

from .rollup_window import Window
from .rollups import DAY

# group_by -> column name in every table ("day" is derived from the time).
COLUMNS: Final = {
    "model": "model_id",
    "context": "context",
    "provider": "provider",
    "variant": "variant_id",
    "experiment": "experiment_id",
}


def _ranges(table: Table, ranges: Sequence[tuple[int, int | None, int | None]]) -> list[Any]:
    clauses = []
    for period, start, end in ranges:
        parts = [table.c.period_seconds == period]
        if start is not None:
            parts.append(table.c.bucket_start >= start)
        if end is not None:
            parts.append(table.c.bucket_start < end)
        clauses.append(and_(*parts))
    return clauses


def rollup_range(table: Table, window: Window) -> ColumnElement[bool]:
    """The window's rollup rows, added and subtracted ones."""
    return or_(false(), *_ranges(table, [*window.rollups, *window.minus_rollups]))


def rollup_sign(table: Table, window: Window) -> ColumnElement[int] | None:
    """-1 for the rows the window subtracts, else 1 (None: nothing is subtracted)."""
    if not window.minus_rollups:
        return None
    return case((or_(*_ranges(table, window.minus_rollups)), -1), else_=1)


def signed(column: ColumnElement[Any], sign: ColumnElement[int] | None) -> ColumnElement[Any]:
    """`column` counted with the row's sign."""
    return column if sign is None else column * sign


def rollup_keys(table: Table, keys: Sequence[str]) -> list[ColumnElement[Any]]:
    """Group keys over a rollup table."""
    return [
        (table.c.bucket_start // DAY if key == "day" else table.c[COLUMNS[key]]).label(key)
        for key in keys
    ]


def raw_keys(table: Table, keys: Sequence[str], start: datetime) -> list[ColumnElement[Any]]:
    """Group keys over a raw table, for a segment starting at `start`."""
    # A raw segment lies within one hour, so within one day: its day is a constant.
    day = (int(start.timestamp() // 1)) // DAY
    return [
        (literal(day) if key == "day" else func.coalesce(table.c[COLUMNS[key]], "")).label(key)
        for key in keys
    ]


@functools.lru_cache(maxsize=4096)
def day_label(day_number: int) -> str:
    """'YYYY-MM-DD' of a day counted from 1970-01-01 (UTC); cached: a summary by day
    labels every histogram row it reads, and strftime was most of its cost.
    """
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day_number)).strftime("%Y-%m-%d")


def key_of(row: Sequence[Any], keys: Sequence[str]) -> tuple[str, ...]:
    """A result row's group key as text (days as 'YYYY-MM-DD')."""
    return tuple(
        day_label(int(value)) if key == "day" else str(value)
        for key, value in zip(keys, row, strict=False)
    )
