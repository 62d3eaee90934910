"""`config_changes`: the recorded history of decision-shaping keys (synchronous; callers
run it in a thread).

Rows are inserted with ON CONFLICT DO NOTHING on (revision, key): every replica records
what it sees and the first insert wins, so each change is stored once. The state at a
revision is rebuilt from the rows (the latest row per key at or before it), so the history
answers for revisions etcd has long compacted away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, and_, delete, func, select
from sqlalchemy.engine import Engine

from .database import database_call, dialect_insert
from .tables import ConfigChange, table_of

_table: Table = table_of(ConfigChange)
START_MARKER = ""  # key of the row marking where recording started


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One recorded change of a decision-shaping key."""

    revision: int
    changed_at: datetime
    key: str
    value_before: str | None  # None: the key did not exist
    value_after: str | None  # None: the key was deleted
    actor: str
    note: str


_COLUMNS = (
    _table.c.revision,
    _table.c.changed_at,
    _table.c.key,
    _table.c.value_before,
    _table.c.value_after,
    _table.c.actor,
    _table.c.note,
)


def _record(row: Iterable[object]) -> ChangeRecord:
    revision, changed_at, key, before, after, actor, note = row
    return ChangeRecord(
        int(revision),  # type: ignore[call-overload]
        changed_at,  # type: ignore[arg-type]
        str(key),
        before,  # type: ignore[arg-type]
        after,  # type: ignore[arg-type]
        str(actor),
        str(note or ""),
    )


class HistoryStore:
    """The `config_changes` table: record changes, read history and past states."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = (
            dialect_insert(engine, _table)
            .on_conflict_do_nothing(index_elements=["revision", "key"])
            .returning(_table.c.id)
        )

    @database_call
    def record(self, changes: Iterable[ChangeRecord]) -> int:
        """Insert once per (revision, key); returns how many rows this call stored."""
        rows = [
            {
                "revision": c.revision,
                "changed_at": c.changed_at,
                "key": c.key[:256],
                "value_before": c.value_before,
                "value_after": c.value_after,
                "actor": c.actor[:128],
                "note": c.note or None,
            }
            for c in changes
        ]
        if not rows:
            return 0
        stored = 0
        with self.engine.begin() as connection:
            for row in rows:  # RETURNING names the rows that were new (psycopg's rowcount
                # for INSERT ... ON CONFLICT DO NOTHING is -1, not 0 or 1)
                stored += len(connection.execute(self._insert, row).all())
        return stored

    @database_call
    def is_empty(self) -> bool:
        """True before the first change is recorded."""
        with self.engine.connect() as connection:
            return connection.execute(select(_table.c.id).limit(1)).first() is None

    @database_call
    def latest_per_key(self, at_revision: int | None = None) -> dict[str, ChangeRecord]:
        """Each key's newest row (at or before `at_revision`), deleted keys included."""
        inner = select(_table.c.key, func.max(_table.c.revision).label("revision")).where(
            _table.c.key != START_MARKER
        )
        if at_revision is not None:
            inner = inner.where(_table.c.revision <= at_revision)
        newest = inner.group_by(_table.c.key).subquery()
        query = select(*_COLUMNS).join(
            newest,
            and_(_table.c.key == newest.c.key, _table.c.revision == newest.c.revision),
        )
        with self.engine.connect() as connection:
            return {r.key: r for r in map(_record, connection.execute(query))}

    @database_call
    def state_at(self, revision: int) -> dict[str, str]:
        """Every key's (redacted) value in force at `revision`."""
        return {
            key: record.value_after
            for key, record in self.latest_per_key(revision).items()
            if record.value_after is not None
        }

    @database_call
    def changes(
        self,
        *,
        key_prefix: str = "",
        since: datetime | None = None,
        after_revision: int = 0,
        up_to_revision: int | None = None,
        limit: int = 100,
    ) -> list[ChangeRecord]:
        """Changes newest first."""
        query = select(*_COLUMNS).where(_table.c.key != START_MARKER)
        if key_prefix:
            escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(_table.c.key.like(escaped + "%", escape="\\"))
        if since is not None:
            query = query.where(_table.c.changed_at >= since)
        if after_revision:
            query = query.where(_table.c.revision > after_revision)
        if up_to_revision is not None:
            query = query.where(_table.c.revision <= up_to_revision)
        query = query.order_by(_table.c.revision.desc(), _table.c.key).limit(limit)
        with self.engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    @database_call
    def oldest_revision(self, retention_start: datetime) -> int | None:
        """The oldest revision whose full state is known: not before recording started,
        and not before the last change older than the retention window (older states are
        no longer complete once pruned). None: nothing recorded yet.
        """
        with self.engine.connect() as connection:
            started = connection.execute(
                select(func.min(_table.c.revision)).where(_table.c.key == START_MARKER)
            ).scalar()
            first_change = connection.execute(select(func.min(_table.c.revision))).scalar()
            expired = connection.execute(
                select(func.max(_table.c.revision)).where(
                    _table.c.changed_at < retention_start, _table.c.key != START_MARKER
                )
            ).scalar()
        candidates = [int(v) for v in (started, expired) if v is not None]
        if candidates:
            return max(candidates)
        return int(first_change) if first_change is not None else None

    @database_call
    def latest_revision(self) -> int:
        """The newest revision recorded (0 when none)."""
        with self.engine.connect() as connection:
            value = connection.execute(select(func.max(_table.c.revision))).scalar()
        return int(value or 0)

    @database_call
    def prune(self, retention_start: datetime) -> int:
        """Delete rows older than the window that a newer row before the window supersedes
        (each key keeps its value in force at the window's start). Idempotent.
        """
        older = _table.alias("older_or_same")
        newest_before = (
            select(older.c.key, func.max(older.c.revision).label("revision"))
            .where(older.c.changed_at < retention_start)
            .group_by(older.c.key)
            .subquery()
        )
        doomed = (
            select(_table.c.id)
            .join(newest_before, _table.c.key == newest_before.c.key)
            .where(
                _table.c.changed_at < retention_start,
                _table.c.revision < newest_before.c.revision,
            )
        )
        with self.engine.begin() as connection:
            ids = [row[0] for row in connection.execute(doomed)]
            for start in range(0, len(ids), 500):
                connection.execute(delete(_table).where(_table.c.id.in_(ids[start : start + 500])))
        return len(ids)
