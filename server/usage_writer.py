"""Group commit for usage reports: one writer task, a bounded queue, replies after commit.

Many concurrent ReportUsage calls share one transaction (one fsync), which is what makes
durable-before-reply affordable. The queue is bounded: when full, callers get an error
to retry later instead of the server growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelroute.storage.usage_store import UsageRecord, UsageStore

log = logging.getLogger("modelroute.usage")


class UsageQueueFullError(Exception):
    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"usage queue full; retry in {retry_after_seconds:.1f}s")
        self.retry_after_seconds = retry_after_seconds


class UsageStoreUnavailableError(Exception):
    pass


@dataclass
class _Unit:
    records: Sequence[UsageRecord]
    done: asyncio.Future[list[bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class UsageWriter:
    def __init__(
        self, store: UsageStore, *, max_pending: int = 50_000, max_batch: int = 5_000
    ) -> None:
        self._store = store
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Unit | None] = asyncio.Queue()
        self._pending = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches_committed = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def submit(self, records: Sequence[UsageRecord]) -> list[bool]:
        if self._closing:
            raise UsageStoreUnavailableError("server is shutting down")
        if self._pending + len(records) > self._max_pending:
            raise UsageQueueFullError(retry_after_seconds=1.0)
        unit = _Unit(records)
        self._pending += len(records)
        self._queue.put_nowait(unit)
        return await unit.done

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            group, size = [first], len(first.records)
            while size < self._max_batch and not self._queue.empty():
                unit = self._queue.get_nowait()
                if unit is None:
                    stopping = True
                    break
                group.append(unit)
                size += len(unit.records)
            await self._commit(group)
        # Drain anything enqueued before stop() was called.
        leftovers = []
        while not self._queue.empty():
            unit = self._queue.get_nowait()
            if unit is not None:
                leftovers.append(unit)
        if leftovers:
            await self._commit(leftovers)

    async def _commit(self, group: list[_Unit]) -> None:
        records = [record for unit in group for record in unit.records]
        try:
            inserted = await asyncio.to_thread(self._store.insert_batch, records)
        except Exception as exc:  # noqa: BLE001 - any DB failure: nothing is acknowledged
            log.error("usage commit of %d reports failed: %s", len(records), exc)
            for unit in group:
                if not unit.done.done():
                    unit.done.set_exception(UsageStoreUnavailableError(str(exc)))
        else:
            self.batches_committed += 1
            offset = 0
            for unit in group:
                count = len(unit.records)
                if not unit.done.done():
                    unit.done.set_result(inserted[offset : offset + count])
                offset += count
        finally:
            self._pending -= len(records)

    async def stop(self) -> None:
        """Refuse new work, commit everything queued, then end the writer task."""
        self._closing = True
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None
