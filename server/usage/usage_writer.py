"""Group commit for usage reports: one writer task, a bounded queue, replies after commit.

Many concurrent ReportUsage calls share one transaction (one fsync), which is what makes
durable-before-reply affordable. The queue is bounded: when full, callers get an error
to retry later instead of the server growing without bound.

A unit may carry an after-commit step (a report's cooldown and counting): the writer runs
it in a task of its own once the unit is stored, so it happens even when the caller has
gone away, and never again for a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.usage_store import UsageRecord, UsageStore

from ..telemetry.metrics import NO_METRICS, MetricsRecorder

log = logging.getLogger("modelroute.usage")

# Bounds for the retry hint of a refused call; the estimate in between comes from the
# measured commit rate.
_MIN_RETRY_AFTER = 0.05
_MAX_RETRY_AFTER = 30.0
_DEFAULT_RETRY_AFTER = 1.0
# How long stop() waits for after-commit steps still running (they talk to etcd).
_AFTER_COMMIT_STOP_SECONDS = 10.0

# Receives, per record of the unit, whether it was stored now (False: a duplicate).
AfterCommit = Callable[[Sequence[bool]], Awaitable[None]]


class UsageQueueFullError(Exception):
    """Too many reports wait for their commit; nothing from this call was queued."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"usage queue full; retry in {retry_after_seconds:.2f}s")
        self.retry_after_seconds = retry_after_seconds


class UsageStoreUnavailableError(Exception):
    """The commit failed, or the writer is not running: nothing was acknowledged."""


@dataclass(slots=True)
class _Unit:
    """One submit() call: committed whole, in a single transaction, or not at all."""

    records: tuple[UsageRecord, ...]
    done: asyncio.Future[list[bool]]
    after_commit: AfterCommit | None = None
    # The running after-commit step, set before `done` resolves.
    effects: asyncio.Task[None] | None = field(default=None)


class UsageWriter:
    """Batches usage reports into group commits; replies once they are durable."""

    def __init__(
        self,
        store: UsageStore,
        *,
        max_pending: int = 50_000,
        max_batch: int = 5_000,
        metrics: MetricsRecorder = NO_METRICS,
    ) -> None:
        """Write to `store`; refuse new reports while `max_pending` wait."""
        self.metrics = metrics
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be positive")
        self._store = store
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._queue: deque[_Unit] = deque()
        self._wakeup = asyncio.Event()
        self._pending = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._rows_per_second: float | None = None
        self.batches_committed = 0
        # After-commit steps still running, by the report ids they act on: a duplicate
        # of such a report waits for them, so its answer too comes after the effects.
        self._effects_by_report: dict[str, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed (queued or in the running transaction)."""
        return self._pending

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("usage writer already started")
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def submit(
        self, records: Sequence[UsageRecord], after_commit: AfterCommit | None = None
    ) -> list[bool]:
        """Wait until `records` are committed (all in one transaction) and their
        `after_commit` step has run; per record, True if stored now, False if its report_id
        was already stored. If the caller is cancelled while waiting, the records may still
        be committed and then `after_commit` still runs (report_id makes retries safe)."""
        if self._closing:
            raise UsageStoreUnavailableError("usage writer is shutting down")
        if self._task is None or self._task.done():
            raise UsageStoreUnavailableError("usage writer is not running")
        if not records:
            return []
        if self._pending + len(records) > self._max_pending:
            raise UsageQueueFullError(self._retry_after(len(records)))
        unit = _Unit(tuple(records), asyncio.get_running_loop().create_future(), after_commit)
        self._queue.append(unit)
        self._pending += len(unit.records)
        self._wakeup.set()
        inserted = await unit.done
        running = {unit.effects} if unit.effects is not None else set()
        for record, was_inserted in zip(records, inserted, strict=True):
            if not was_inserted and (task := self._effects_by_report.get(record.report_id)):
                running.add(task)
        if running:
            # shield: a caller giving up must not cancel what its report set in motion.
            await asyncio.shield(asyncio.gather(*running))
        return inserted

    async def stop(self) -> None:
        """Refuse new work, commit everything already queued, then end the writer task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            # asyncio.wait, not await: a cancelled stop() must not cancel the drain.
            await asyncio.wait([self._task])
        running = set(self._effects_by_report.values())
        if running:
            _, stuck = await asyncio.wait(running, timeout=_AFTER_COMMIT_STOP_SECONDS)
            if stuck:
                log.error("%d after-commit steps still running at shutdown", len(stuck))

    def _retry_after(self, incoming: int) -> float:
        # Time until enough of the queue has committed for this call to fit.
        if not self._rows_per_second:
            return _DEFAULT_RETRY_AFTER
        excess = self._pending + incoming - self._max_pending
        return min(max(excess / self._rows_per_second, _MIN_RETRY_AFTER), _MAX_RETRY_AFTER)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._commit(self._take_group())
        finally:
            # Only reached with work left if this task was cancelled (event loop closing).
            while self._queue:
                unit = self._queue.popleft()
                self._pending -= len(unit.records)
                _fail(unit, UsageStoreUnavailableError("usage writer stopped"))

    def _take_group(self) -> list[_Unit]:
        # Whole units only; a unit larger than max_batch goes alone rather than being split.
        first = self._queue.popleft()
        group, size = [first], len(first.records)
        while self._queue and size + len(self._queue[0].records) <= self._max_batch:
            unit = self._queue.popleft()
            group.append(unit)
            size += len(unit.records)
        return group

    async def _commit(self, group: list[_Unit]) -> None:
        records = [record for unit in group for record in unit.records]
        started = time.monotonic()
        try:
            inserted = await asyncio.to_thread(self._store.insert_batch, records)
        except Exception as exc:  # noqa: BLE001 - any database failure: acknowledge nothing
            failure = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
            cause = getattr(failure, "orig", None) or failure  # the driver's error, not the SQL
            log.error("usage commit of %d reports failed: %s", len(records), cause)
            # Only the (dialect-neutral) class: the message may quote other callers' rows.
            kind = exc.detail if isinstance(exc, StoreUnavailableError) else type(exc).__name__
            for unit in group:
                error = UsageStoreUnavailableError(f"usage database error ({kind})")
                error.__cause__ = exc
                _fail(unit, error)
        else:
            self._observe(len(records), time.monotonic() - started)
            offset = 0
            for unit in group:
                count = len(unit.records)
                flags = inserted[offset : offset + count]
                if unit.after_commit is not None and any(flags):
                    self._start_effects(unit, flags)
                if not unit.done.done():  # done = the submitter was cancelled
                    unit.done.set_result(flags)
                offset += count
        finally:
            self._pending -= len(records)
            for unit in group:  # cancelled mid-commit: the outcome is unknown, so not acked
                _fail(unit, UsageStoreUnavailableError("usage writer stopped"))

    def _start_effects(self, unit: _Unit, inserted: list[bool]) -> None:
        """Run the unit's after-commit step in a task the writer owns, whatever becomes
        of the caller."""
        assert unit.after_commit is not None
        task = asyncio.create_task(_guarded(unit.after_commit, inserted), name="after-commit")
        unit.effects = task
        report_ids = [
            r.report_id for r, stored in zip(unit.records, inserted, strict=True) if stored
        ]
        for report_id in report_ids:
            self._effects_by_report[report_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            for report_id in report_ids:
                if self._effects_by_report.get(report_id) is task:
                    del self._effects_by_report[report_id]

        task.add_done_callback(forget)

    def _observe(self, rows: int, seconds: float) -> None:
        self.batches_committed += 1
        self.metrics.record_usage_write(rows, seconds)
        rate = rows / max(seconds, 1e-6)
        previous = self._rows_per_second
        self._rows_per_second = rate if previous is None else 0.7 * previous + 0.3 * rate


async def _guarded(step: AfterCommit, inserted: list[bool]) -> None:
    try:
        await step(inserted)
    except Exception:  # the rows are stored; a failing step must not hide that
        log.exception("after-commit step of a usage commit failed")


def _fail(unit: _Unit, error: UsageStoreUnavailableError) -> None:
    if not unit.done.done():
        unit.done.set_exception(error)
