"""Publication of this replica's quota counts and reservations (see quotas.py).

One task per replica writes `runtime/usage/<replica id>` through the RuntimeStore port,
as a write guarded on the other replicas' keys, about once a second and at once when an
admission needs a new share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeVar

from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.runtime_store import RuntimeStore

from .keys import USAGE_DIR
from .quota_counts import (
    PUBLISH_INTERVAL,
    REQUESTS_PER_DAY,
    day_window,
    window_end,
)

if TYPE_CHECKING:
    from .quotas import QuotaTracker

log = logging.getLogger("modelroute.quotas")

# Seconds one etcd step of a publication may take before etcd counts as unreachable. Per
# step, not per publication: a publication that keeps losing guarded writes to other
# replicas takes longer, yet etcd answers every step (counting locally then could pass
# the limit; its callers fall back after their own wait instead).
PUBLISH_TIMEOUT: Final = 2.0
MAX_PUBLISH_ATTEMPTS: Final = 8  # guarded writes retried after a peer published first


class PublicationContendedError(RuntimeError):
    """Every guarded write lost to another replica's publication (etcd is reachable)."""


class QuotaPublisher:
    """Publishes this replica's counts to `runtime/usage/<replica>` once a second, and at
    once when an admission needs a new share. The key is bound to a lease that outlives
    the day window, so a replica that stops still counts for the rest of the day."""

    def __init__(self, tracker: QuotaTracker, store: RuntimeStore) -> None:
        self._tracker = tracker
        self._store = store
        self._key = f"{USAGE_DIR}{tracker.replica_id}"
        self._lease: int | None = None
        self._lease_day = -1

    async def run(self) -> None:
        tracker = self._tracker
        first = True  # publish at once: peers count this replica in N from the start
        while True:
            if not first:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
                # cancellation that stops this task (CPython gh-86296), and it runs on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PUBLISH_INTERVAL):
                        await tracker.sync_requested.wait()
            first = False
            tracker.sync_requested.clear()
            waiters = tracker.take_sync_waiters()
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except PublicationContendedError as exc:
                # etcd answers; the others just kept writing first. Not an outage: local
                # counting could pass the limit, so the waiting callers fall back instead.
                log.info("%s", exc)
                _answer(waiters, False)
            except Exception as exc:  # noqa: BLE001 - etcd down: count locally, retry
                if tracker.publishing_ok:
                    log.warning("usage counts not published (admitting locally): %s", exc)
                tracker.publishing_ok = False
                _answer(waiters, False)
                # Those who asked meanwhile would wait for the next try: they count locally now.
                _answer(tracker.take_sync_waiters(), False)
                await asyncio.sleep(0.2)
            else:
                if not tracker.publishing_ok:
                    log.info("usage counts published again")
                tracker.publishing_ok = True
                _answer(waiters, True)

    async def publish_once(self) -> None:
        """Write this replica's counts and reservations, guarded: the transaction fails if
        any other replica's key changed after the view the reservations were computed
        from; then the directory is read directly and the publication recomputed. So
        every reservation leaves room for all others as they stand (no stale views)."""
        tracker = self._tracker
        store = self._store
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            now = tracker.clock()
            day = day_window(now)
            if self._lease is None or self._lease_day != day:
                # Lives until the end of tomorrow: day counts must outlast this replica.
                ttl = math.ceil((window_end(REQUESTS_PER_DAY, now) - now).total_seconds())
                self._lease = await _step(store.grant_lease(ttl + 86_400))
                self._lease_day = day
            counts = tracker.publication(now)
            if await _step(
                store.put_if_others_unchanged(
                    self._key,
                    counts.to_json(tracker.replica_id, now),
                    directory=USAGE_DIR,
                    since_revision=tracker.seen_revision,
                    lease=self._lease,
                )
            ):
                tracker.mark_published(counts)
                return
            read = await _step(store.read_dir(USAGE_DIR))
            stored = {
                name: (entry.value, entry.mod_revision) for name, entry in read.entries.items()
            }
            tracker.refresh_peers(stored, read.revision)
        raise PublicationContendedError(
            f"usage counts not published: other replicas published first {MAX_PUBLISH_ATTEMPTS}"
            " times in a row"
        )

    async def withdraw(self) -> None:
        """On shutdown: publish the final counts (they keep counting for the window)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.publish_once()


_T = TypeVar("_T")


async def _step(operation: Awaitable[_T]) -> _T:
    """One etcd operation of a publication; no answer within PUBLISH_TIMEOUT is an outage."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            return await operation
    except TimeoutError:
        raise StoreUnavailableError(
            "etcd", f"no answer within {PUBLISH_TIMEOUT:g} s to a usage publication step"
        ) from None


def _answer(waiters: asyncio.Future[bool] | None, ok: bool) -> None:
    if waiters is not None and not waiters.done():
        waiters.set_result(ok)
