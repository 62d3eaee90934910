"""The SQL side of usage logging against a real database: migrations, idempotent batch
inserts, and the group-commit writer (queue limit, drain on stop, failures).

Runs on a SQLite file; also on PostgreSQL when MODELROUTE_TEST_DATABASE_URL points at a
server (each test gets a fresh database there, dropped afterwards)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from modelroute.server.usage.usage_writer import (
    UsageQueueFullError,
    UsageStoreUnavailableError,
    UsageWriter,
)
from modelroute.storage.database import (
    MIGRATIONS_DIR,
    create_engine_for,
    default_sqlite_url,
    normalise_url,
    upgrade,
)
from modelroute.storage.tables import LlmUsageLog, table_of
from modelroute.storage.usage_store import UsageRecord, UsageStore
from sqlalchemy import Engine, create_engine, inspect, text
from sqlmodel import SQLModel

from tests.helpers import eventually

POSTGRES_SERVER = os.environ.get("MODELROUTE_TEST_DATABASE_URL")
TABLES = {"llm_usage_logs", "llm_feedback", "user_model_preferences", "alerts"}
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not POSTGRES_SERVER, reason="MODELROUTE_TEST_DATABASE_URL is not set"
            ),
        ),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usage.db'}"
        return
    assert POSTGRES_SERVER
    server_url = normalise_url(POSTGRES_SERVER)
    name = f"mrtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def record(report_id: str, **changes: Any) -> UsageRecord:
    base = UsageRecord(
        report_id=report_id,
        decision_id="d1.signed-token",
        context="rag.answer",
        model_id="gpt-4o",
        provider="openai",
        outcome="OK",
        user_id="42",
        tier="premium",
        input_tokens=1000,
        output_tokens=500,
        latency_ms=850,
        estimated_cost=0.0075,
        error_message=None,
        retry_after_ms=None,
        experiment_id="exp-1",
        variant_id="b",
        reason="EXPERIMENT",
        config_revision=7,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        created_at=T0,
    )
    return dataclasses.replace(base, **changes)


def records(prefix: str, count: int) -> list[UsageRecord]:
    return [record(f"{prefix}-{i}") for i in range(count)]


class GatedStore(UsageStore):
    """The real store, recording the size of every transaction. After hold(), the next
    insert_batch waits in its worker thread until release(), so a test can line up the
    writer's queue behind it deterministically."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.batches: list[int] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        self._open.set()

    def hold(self) -> None:
        self.entered.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def insert_batch(self, records: Sequence[UsageRecord]) -> list[bool]:
        self.batches.append(len(records))
        self.entered.set()
        if not self._open.wait(timeout=60):
            raise TimeoutError("test never released the store")
        inserted: list[bool] = super().insert_batch(records)
        return inserted


@asynccontextmanager
async def running(
    store: GatedStore, max_pending: int = 50_000, max_batch: int = 5_000
) -> AsyncIterator[UsageWriter]:
    writer = UsageWriter(store, max_pending=max_pending, max_batch=max_batch)
    await writer.start()
    try:
        yield writer
    finally:
        store.release()
        await writer.stop()


async def hold_writer(store: GatedStore, writer: UsageWriter) -> asyncio.Task[list[bool]]:
    """Start a one-record commit and keep it open: later submits queue up behind it."""
    store.hold()
    blocker = asyncio.create_task(writer.submit([record(f"blocker-{uuid.uuid4().hex}")]))
    await eventually(lambda: _assert(store.entered.is_set()))
    return blocker


def _assert(condition: bool) -> None:
    assert condition


# --- engines and migrations ----------------------------------------------------------


def test_upgrade_is_idempotent_and_builds_the_models_schema(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # a second replica starting, or a restart
    engine = create_engine_for(database_url)
    try:
        schema = inspect(engine)
        assert TABLES | {"alembic_version"} <= set(schema.get_table_names())
        indexes = {tuple(i["column_names"]) for i in schema.get_indexes("llm_usage_logs")}
        assert {("created_at", "context"), ("context",), ("model_id",)} <= indexes
        uniques = schema.get_unique_constraints("llm_usage_logs")
        assert ["report_id"] in [u["column_names"] for u in uniques]
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert context.get_current_revision() == head
            # The hand-written migration and the SQLModel classes describe the same schema.
            assert compare_metadata(context, SQLModel.metadata) == []
        assert UsageStore(engine).count() == 0
    finally:
        engine.dispose()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def test_sqlite_engine_creates_its_directory_and_commits_durably(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "not" / "yet")
    assert url == f"sqlite:///{tmp_path}/not/yet/modelroute.db"
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
        full = 2
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": full,
            "busy_timeout": 5000,
            "foreign_keys": 1,
        }
        assert (tmp_path / "not" / "yet" / "modelroute.db").exists()
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_all_use_psycopg(scheme: str) -> None:
    engine = create_engine_for(f"{scheme}://user:p%40ss@db.example:5432/usage")
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert engine.url.password == "p@ss"
    finally:
        engine.dispose()


# --- UsageStore ------------------------------------------------------------------------


def test_insert_batch_tells_new_rows_from_duplicates(engine: Engine) -> None:
    store = UsageStore(engine)
    original = record("a")
    assert store.insert_batch([original]) == [True]

    batch = [
        record("b"),
        record("a", model_id="claude-3-sonnet", input_tokens=1),  # retry of a stored report
        record("c"),
        record("b", output_tokens=9),  # the same report twice in one batch
    ]
    assert store.insert_batch(batch) == [True, False, True, False]

    assert store.get("a") == original  # a duplicate never overwrites
    assert store.get("b") == batch[0]  # the first of the in-batch pair is the one stored
    assert store.get("c") == batch[2]
    assert store.get("never-sent") is None
    assert store.count() == 3
    assert store.insert_batch([]) == []


def test_created_at_is_stored_as_the_same_instant_in_utc(engine: Engine) -> None:
    store = UsageStore(engine)
    berlin = timezone(timedelta(hours=2))
    store.insert_batch([record("tz", created_at=datetime(2025, 6, 1, 14, 0, tzinfo=berlin))])
    stored = store.get("tz")
    assert stored is not None
    assert stored.created_at == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert stored.created_at.utcoffset() == timedelta(0)


# --- UsageWriter -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_submits_share_transactions(engine: Engine) -> None:
    store = GatedStore(engine)
    async with running(store) as writer:
        results = await asyncio.gather(*(writer.submit(records(f"c{i}", 3)) for i in range(50)))
        assert results == [[True, True, True]] * 50
        assert len(store.batches) < 50  # group commit: fewer transactions than calls
        assert writer.pending == 0
    assert store.count() == 150
    assert all(store.get(f"c{i}-{j}") is not None for i in range(50) for j in range(3))


@pytest.mark.asyncio
async def test_duplicate_report_ids_across_calls_in_one_transaction(engine: Engine) -> None:
    store = GatedStore(engine)
    async with running(store) as writer:
        blocker = await hold_writer(store, writer)
        first = asyncio.create_task(writer.submit([record("x1"), record("shared")]))
        second = asyncio.create_task(writer.submit([record("shared"), record("x2")]))
        await eventually(lambda: _assert(writer.pending == 5))
        store.release()
        assert await blocker == [True]
        assert await first == [True, True]
        assert await second == [False, True]
        assert store.batches == [1, 4]  # both calls went into the same transaction
    assert store.count() == 4


@pytest.mark.asyncio
async def test_full_queue_refuses_the_whole_call_at_once(engine: Engine) -> None:
    store = GatedStore(engine)
    async with running(store, max_pending=100) as writer:
        store.hold()
        early = asyncio.create_task(writer.submit(records("early", 60)))
        await eventually(lambda: _assert(store.entered.is_set()))

        # Refused while the store is still held: the call did not wait for a commit.
        with pytest.raises(UsageQueueFullError) as refused:
            await writer.submit(records("late", 50))
        assert refused.value.retry_after_seconds > 0
        assert writer.pending == 60  # nothing from the refused call was queued

        store.release()
        assert await early == [True] * 60
        assert store.get("late-0") is None
        assert store.count() == 60

        # Retrying after the queue drained works.
        assert await writer.submit(records("late", 50)) == [True] * 50
    assert store.count() == 110


@pytest.mark.asyncio
async def test_stop_commits_everything_already_queued(engine: Engine) -> None:
    store = GatedStore(engine)
    writer = UsageWriter(store, max_batch=10)
    await writer.start()
    try:
        blocker = await hold_writer(store, writer)
        queued = [asyncio.create_task(writer.submit(records(f"q{i}", 4))) for i in range(6)]
        await eventually(lambda: _assert(writer.pending == 1 + 6 * 4))
        stopping = asyncio.create_task(writer.stop())

        async def refuses_new_work() -> None:
            try:
                await writer.submit([])
            except UsageStoreUnavailableError as exc:
                assert "shutting down" in str(exc)
                return
            raise AssertionError("writer still accepts work")

        await eventually(refuses_new_work)
        with pytest.raises(UsageStoreUnavailableError, match="shutting down"):
            await writer.submit([record("after-stop")])
        assert not stopping.done()  # still draining: the held commit has not finished

        store.release()
        await stopping
        assert await blocker == [True]
        assert [await task for task in queued] == [[True] * 4] * 6
    finally:
        store.release()
        await writer.stop()
    assert writer.pending == 0
    assert store.count() == 1 + 24
    assert store.get("after-stop") is None
    assert len(store.batches) == 1 + 3  # drained in max_batch-sized groups, calls not split


@pytest.mark.asyncio
async def test_database_failure_acknowledges_nothing(engine: Engine) -> None:
    store = GatedStore(engine)
    async with running(store) as writer:
        assert await writer.submit([record("before")]) == [True]
        blocker = await hold_writer(store, writer)
        calls = [
            asyncio.create_task(writer.submit([record(f"lost{i}", user_id="secret-user")]))
            for i in range(3)
        ]
        await eventually(lambda: _assert(writer.pending == 4))
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE llm_usage_logs"))
        store.release()

        outcomes = await asyncio.gather(blocker, *calls, return_exceptions=True)
        assert all(isinstance(o, UsageStoreUnavailableError) for o in outcomes), outcomes
        # Callers learn that it failed, not other callers' data from the driver's message.
        assert not any("secret-user" in str(o) or "lost" in str(o) for o in outcomes)
        assert writer.pending == 0

        # The writer survives the outage: once the table is back, commits work again.
        table_of(LlmUsageLog).create(engine)
        assert await writer.submit([record("after")]) == [True]
    assert store.count() == 1
    assert store.get("lost0") is None


@pytest.mark.asyncio
async def test_a_failed_transaction_stores_nothing_from_any_call_in_it(engine: Engine) -> None:
    store = GatedStore(engine)
    async with running(store) as writer:
        blocker = await hold_writer(store, writer)
        good = asyncio.create_task(writer.submit(records("good", 2)))
        bad = asyncio.create_task(writer.submit([record("bad", context=None)]))  # NOT NULL
        await eventually(lambda: _assert(writer.pending == 4))
        store.release()

        assert await blocker == [True]
        for call in (good, bad):
            with pytest.raises(UsageStoreUnavailableError, match="IntegrityError"):
                await call
        assert store.get("good-0") is None  # rolled back with the bad row: not half-stored

        # Nothing was acknowledged, so the client retries; alone, the good call commits.
        assert await writer.submit(records("good", 2)) == [True, True]
    assert store.count() == 1 + 2
    # The rollups went with the rows: the rolled-back calls left nothing there either.
    with engine.connect() as connection:
        rolled_up = connection.execute(
            text("SELECT sum(calls) FROM usage_rollups WHERE period_seconds = 3600")
        ).scalar_one()
    assert rolled_up == 1 + 2
