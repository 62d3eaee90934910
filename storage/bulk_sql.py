"""Bulk INSERT / additive UPSERT for the ingestion path, on plain tuples.

Why not SQLAlchemy Core here: per parameter set it builds a dict, runs every bind processor
and re-orders the values (`construct_params`), which cost more CPU than the database's own
work for each usage row and its rollup rows. The statement text is the same on SQLite and
PostgreSQL (ON CONFLICT ... DO UPDATE / DO NOTHING, RETURNING); the way rows travel differs:
- SQLite: multi-row VALUES (INSERT ... RETURNING) or executemany (UPSERT), in process;
- PostgreSQL: one statement over `unnest()` of one array per column, so the query text stays
  small and constant (psycopg re-parses long texts on every call) and the server runs one
  statement per batch instead of one per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Engine

# SQLAlchemy's SQLite DATETIME text (what UtcDateTime stores there): UTC, microseconds.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
# Rows per multi-row INSERT on SQLite: well within its 32,766 parameters.
_SQLITE_ROWS_PER_STATEMENT = 500


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


class _Bulk:
    def __init__(self, engine: Engine, table: Table, columns: Sequence[str]) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {dialect!r} (sqlite, postgresql)")
        self._postgres = dialect == "postgresql"
        self._table = table.name
        self._columns = list(columns)
        if self._postgres:
            types = [table.c[c].type.compile(dialect=engine.dialect) for c in columns]
            arrays = ", ".join(f"%s::{t}[]" for t in types)
            self._source = f"SELECT * FROM unnest({arrays})"

    def _insert(self, source: str) -> str:
        return f"INSERT INTO {self._table} ({', '.join(self._columns)}) {source}"

    @staticmethod
    def _arrays(rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
        return tuple(list(column) for column in zip(*rows, strict=True))


class BulkInsertNew(_Bulk):
    """INSERT rows, skipping those whose `unique` value exists; returns the stored values
    (tuples when `unique` names several columns).
    """

    def __init__(
        self, engine: Engine, table: Table, columns: Sequence[str], unique: str | Sequence[str]
    ) -> None:
        super().__init__(engine, table, columns)
        self._single = isinstance(unique, str)
        key = unique if isinstance(unique, str) else ", ".join(unique)
        self._tail = f" ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
        self._by_rows: dict[int, str] = {}
        if self._postgres:
            self._statement = self._insert(self._source) + self._tail

    def run(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> set[Any]:
        """Insert `rows` on `connection`; returns the unique values actually stored."""
        stored: set[Any] = set()
        if not rows:
            return stored
        if self._postgres:
            stored.update(
                self._values_of(connection.exec_driver_sql(self._statement, self._arrays(rows)))
            )
            return stored
        for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
            chunk = rows[start : start + _SQLITE_ROWS_PER_STATEMENT]
            flat = tuple(value for row in chunk for value in row)
            stored.update(
                self._values_of(connection.exec_driver_sql(self._values(len(chunk)), flat))
            )
        return stored

    def _values_of(self, result: Any) -> Iterable[Any]:
        return result.scalars() if self._single else (tuple(row) for row in result)

    def _values(self, count: int) -> str:
        statement = self._by_rows.get(count)
        if statement is None:
            one = f"({', '.join('?' for _ in self._columns)})"
            values = "VALUES " + ", ".join(one for _ in range(count))
            statement = self._by_rows[count] = self._insert(values) + self._tail
        return statement


class BulkAddUpsert(_Bulk):
    """INSERT rows (`keys`, `sums`, `others`), or add their `sums` to the rows with the same
    `keys` (and apply `extra_set`). A key must not repeat within one run().
    """

    def __init__(
        self,
        engine: Engine,
        table: Table,
        keys: Sequence[str],
        sums: Sequence[str],
        others: Sequence[str] = (),
        extra_set: Sequence[str] = (),
    ) -> None:
        super().__init__(engine, table, [*keys, *sums, *others])
        name = table.name
        updates = [f"{c} = {name}.{c} + excluded.{c}" for c in sums] + list(extra_set)
        tail = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
        if self._postgres:
            self._statement = self._insert(self._source) + tail
        else:
            self._statement = (
                self._insert(f"VALUES ({', '.join('?' for _ in self._columns)})") + tail
            )

    def run(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert `rows` on `connection`, adding the sums to existing rows."""
        if not rows:
            return
        if self._postgres:
            connection.exec_driver_sql(self._statement, self._arrays(rows))
        else:
            connection.exec_driver_sql(self._statement, list(rows))
