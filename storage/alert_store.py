"""The `alerts` table: one row per condition and window, shared by every replica.

The row id is derived from the alert's de-duplication key, so when several replicas see
the same condition (every replica sees a rejected config value; every replica sums the
same quota counts) exactly one INSERT wins, and only its replica sends the webhook.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine

from .database import database_call, dialect_insert
from .tables import Alert, table_of

_table: Table = table_of(Alert)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as stored in the `alerts` table."""

    alert_id: str
    kind: str
    severity: str  # info / warning / critical
    subject: str
    message: str
    dedup_key: str
    created_at: datetime


def alert_id_for(dedup_key: str) -> str:
    """The alert's primary key: the same on every replica for one de-duplication key."""
    return hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


class AlertStore:
    """The `alerts` table: insert once per condition and window, read the latest."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = (
            dialect_insert(engine, _table)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(_table.c.id)
        )

    @database_call
    def insert_once(self, alert: AlertRecord) -> bool:
        """True if this call stored the alert; False if an earlier one (any replica) did."""
        row = {
            "id": alert.alert_id,
            "kind": alert.kind,
            "severity": alert.severity,
            "subject": alert.subject[:256],
            "message": alert.message,
            "dedup_key": alert.dedup_key[:256],
            "created_at": alert.created_at,
        }
        with self.engine.begin() as connection:
            return connection.execute(self._insert, row).first() is not None

    @database_call
    def recent(self, limit: int, since: datetime | None = None) -> list[AlertRecord]:
        """At most `limit` alerts, newest first, optionally only those since `since`."""
        query = select(
            _table.c.id,
            _table.c.kind,
            _table.c.severity,
            _table.c.subject,
            _table.c.message,
            _table.c.dedup_key,
            _table.c.created_at,
        ).order_by(_table.c.created_at.desc(), _table.c.id)
        if since is not None:
            query = query.where(_table.c.created_at >= since)
        with self.engine.connect() as connection:
            rows = connection.execute(query.limit(limit)).all()
        return [AlertRecord(*row) for row in rows]
