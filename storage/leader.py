"""One leader among the replicas: a leased etcd key, created only if absent.

The replica whose create-if-absent transaction wins holds `key` (value: its replica id)
on a lease of `ttl` seconds that it keeps alive; while it does, the others retry. If its
process dies, etcd deletes the key when the lease runs out (within `ttl` seconds) and the
next attempt of another replica wins. A leader that cannot refresh its lease (etcd
unreachable, lease expired) stops its work at once, so two leaders never act for longer
than one refresh interval; writes made as leader are also fenced on the key's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

import aetcd

log = logging.getLogger("modelroute.leader")
DEFAULT_TTL: Final = 3
LeaderWork = Callable[[], Coroutine[Any, Any, None]]


class LeaderElection:
    """One leader at a time among replicas, through a leased etcd key."""

    def __init__(
        self, etcd: aetcd.Client, key: bytes, identity: str, *, ttl: int = DEFAULT_TTL
    ) -> None:
        self.etcd = etcd
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.is_leader = False

    async def run(self, lead: LeaderWork) -> None:
        """Campaign forever; run `lead()` while leader, cancel it when leadership ends."""
        retry = self.ttl / 3
        while True:
            lease = None
            try:
                lease = await self.etcd.lease(self.ttl)
                tx = self.etcd.transactions
                won, _ = await self.etcd.transaction(
                    compare=[tx.create(self.key) == 0],
                    success=[tx.put(self.key, self.identity.encode(), lease=lease)],
                    failure=[],
                )
                if not won:
                    await _revoke(lease)
                    lease = None
                    await asyncio.sleep(retry)
                    continue
                log.info("%s leads (%s)", self.identity, self.key.decode())
                await self._lead(lease, lead)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd trouble: campaign again later
                log.warning("leader election for %s: %s", self.key.decode(), exc)
                await asyncio.sleep(retry)
            finally:
                self.is_leader = False

    async def _lead(self, lease: aetcd.Lease, lead: LeaderWork) -> None:
        self.is_leader = True
        work = asyncio.create_task(lead(), name=f"leader:{self.key.decode()}")
        try:
            while not work.done():
                await asyncio.sleep(self.ttl / 3)
                # (asyncio.timeout: 3.11's wait_for can swallow the cancellation that stops us.)
                async with asyncio.timeout(self.ttl / 2):
                    reply = await lease.refresh()
                if reply is None or reply.TTL <= 0:
                    log.warning("%s lost the lease on %s", self.identity, self.key.decode())
                    return
            work.result()  # surface the error of a leadership task that ended by itself
        finally:
            self.is_leader = False
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            # Give the key up now rather than when the lease runs out.
            await asyncio.shield(_revoke(lease))


async def _revoke(lease: aetcd.Lease) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(lease.revoke(), 2)
