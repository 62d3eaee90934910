"""Hand-built INSERT / additive-UPSERT text for the ingestion path, run with the driver's
executemany on plain tuples.

Why not SQLAlchemy Core here: per parameter set it builds a dict, runs every bind processor
and re-orders the values (`construct_params`), which cost more CPU than SQLite's own work
for each usage row and its rollup rows. The statements are the same on SQLite and
PostgreSQL (ON CONFLICT ... DO UPDATE / DO NOTHING, RETURNING); only the placeholder and the
way a timestamp is passed differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

# SQLAlchemy's SQLite DATETIME text (what UtcDateTime stores there): UTC, microseconds.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def placeholder(engine: Engine) -> str:
    style = engine.dialect.paramstyle
    if style == "qmark":
        return "?"
    if style in ("format", "pyformat"):
        return "%s"
    raise ValueError(f"unsupported driver paramstyle {style!r}")


def time_binder(engine: Engine) -> Callable[[datetime], Any]:
    """How a timestamp is passed so that it is stored exactly as UtcDateTime stores it."""
    if engine.dialect.name == "sqlite":

        def to_text(moment: datetime) -> str:
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
            return moment.strftime(_SQLITE_TIME)

        return to_text

    def to_utc(moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    return to_utc


def additive_upsert(
    engine: Engine,
    table: str,
    keys: Sequence[str],
    sums: Sequence[str],
    others: Sequence[str] = (),
    extra_set: Sequence[str] = (),
) -> str:
    """INSERT a row (`keys`, `sums`, `others` in that order), or add its `sums` to the row
    with the same `keys` (and apply `extra_set`, e.g. for `others`)."""
    columns = [*keys, *sums, *others]
    mark = placeholder(engine)
    updates = [f"{c} = {table}.{c} + excluded.{c}" for c in sums] + list(extra_set)
    return (
        f"INSERT INTO {table} ({', '.join(columns)})"
        f" VALUES ({', '.join(mark for _ in columns)})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
    )


def insert_new_returning(
    engine: Engine, table: str, columns: Sequence[str], rows: int, unique: str
) -> str:
    """Multi-row INSERT that skips rows whose `unique` value exists and returns it for the
    rows stored (one statement: executemany cannot return rows)."""
    mark = placeholder(engine)
    one = f"({', '.join(mark for _ in columns)})"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join(one for _ in range(rows))}"
        f" ON CONFLICT ({unique}) DO NOTHING RETURNING {unique}"
    )
