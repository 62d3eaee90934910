"""Alembic environment.

`modelroute.storage.database.upgrade` hands over an open connection (already inside the
transaction that serialises concurrent upgrades); the plain `alembic` command line, with
`sqlalchemy.url` set, gets an engine of its own.
"""

from __future__ import annotations

import modelroute.storage.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone() -> None:
    from modelroute.storage.database import create_engine_for

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or use modelroute.storage.database.upgrade()")
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    _run_standalone()
