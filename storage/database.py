"""Database engines and migrations (SQLite file by default, PostgreSQL by URL)."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Table, create_engine, event, make_url, text
from sqlalchemy import Engine as Engine  # re-exported: services name the type, not the driver
from sqlalchemy.exc import SQLAlchemyError

from .errors import StoreUnavailableError

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any constant works; it only has to be the same in every replica running upgrade().
_PG_MIGRATION_LOCK = 0x6D726F757465  # "mroute"


def database_call(method: Callable[P, R]) -> Callable[P, R]:
    """Make a store method raise `StoreUnavailableError` for any database failure.

    Only the exception's class is kept in the message: a driver's message may quote
    other callers' rows or the connection URL.
    """

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise StoreUnavailableError("database", type(exc).__name__) from exc

    return translated


def normalise_url(url: str) -> str:
    """`postgres://` and `postgresql://` (what most tools print) -> the psycopg 3 driver."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def default_sqlite_url(data_dir: Path) -> str:
    """The SQLite file under `data_dir` used when no database URL is given."""
    return f"sqlite:///{data_dir / 'modelroute.db'}"


def create_engine_for(url: str) -> Engine:
    """An engine for `url` (SQLite in WAL mode, or PostgreSQL through psycopg 3)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a replica must survive the database restarting under it.
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers do not block the writer. synchronous=FULL: WAL alone (NORMAL) may
            # lose the last commits on power loss, and a report is acknowledged only after
            # its commit, so the commit must be on disk. busy_timeout first: switching to
            # WAL needs a lock that another process opening the file may hold.
            cursor.execute("PRAGMA busy_timeout=5000")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements all read the same committed state (a summary read in
    several statements, some subtracted from others, must not see a commit in between).
    PostgreSQL: one REPEATABLE READ transaction. SQLite: one read transaction (the driver
    would run each SELECT on its own), which in WAL mode blocks no writer.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            with connection.begin():
                yield connection
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN")
        try:
            yield connection
        finally:
            connection.exec_driver_sql("ROLLBACK")


def _enable_wal(cursor: Any) -> None:
    """WAL is a property of the file: set once, by whichever process opens it first.

    The switch needs an exclusive lock that SQLite's busy handler does not always wait for (two
    replicas opening a new file at once), so "locked" is retried for a while.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _migration_engine(url: str) -> Engine:
    engine = create_engine_for(url)
    if engine.dialect.name != "sqlite":
        return engine

    # Python's sqlite3 runs DDL outside any transaction, so two processes upgrading one
    # file at once would both see an empty schema. Taking control of transactions and
    # starting with BEGIN IMMEDIATE (the write lock) makes the version check and the DDL
    # one atomic step; a second process waits (busy_timeout) and then finds head.
    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upgrade(url: str) -> None:
    """Apply migrations up to head.

    Idempotent, safe to run from several processes at once, and independent of the working
    directory (no alembic.ini needed).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % (e.g. in a password) must be doubled.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    engine = _migration_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # PostgreSQL DDL is transactional: whoever gets the lock second sees head.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def dialect_insert(engine: Engine, table: Table) -> Any:
    """INSERT with ON CONFLICT support (SQLite and PostgreSQL share that syntax)."""
    from sqlalchemy.dialects import postgresql, sqlite

    inserts: dict[str, Callable[[Table], Any]] = {
        "sqlite": sqlite.insert,
        "postgresql": postgresql.insert,
    }
    insert = inserts.get(engine.dialect.name)
    if insert is None:
        raise ValueError(f"unsupported database {engine.dialect.name!r} (sqlite, postgresql)")
    return insert(table)
