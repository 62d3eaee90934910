"""`RuntimeStore` in memory, with etcd's revision and lease semantics, for unit tests.

Every write bumps one revision counter, as in etcd; leases end when the injected clock
passes their expiry (checked on each access). Subscribers receive each write as the
`ConfigUpdate` the etcd watch would deliver, so the algorithms on top (quota
publication, cooldowns) run unchanged against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import StoreUnavailableError
from .runtime_store import DirectoryRead
from .updates import ConfigUpdate, StoredValue


@dataclass(slots=True)
class _Entry:
    value: bytes
    mod_revision: int
    lease: int | None


class InMemoryRuntimeStore:
    """A `RuntimeStore` in a dict; `available = False` makes every call fail like etcd down."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty store; `clock` (seconds) decides when leases end."""
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[int, float] = {}  # id → expiry
        self._last_lease = 0
        self.revision = 1
        self.available = True
        self._subscribers: list[Callable[[ConfigUpdate], None]] = []

    def subscribe(self, deliver: Callable[[ConfigUpdate], None]) -> None:
        """Deliver the full state now, then every change (like the etcd watch)."""
        self._expire()
        deliver(
            ConfigUpdate(
                self.revision,
                {key: entry.value for key, entry in self._entries.items()},
                True,
                {key: entry.mod_revision for key, entry in self._entries.items()},
            )
        )
        self._subscribers.append(deliver)

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailableError("etcd", "in-memory store marked unavailable")
        self._expire()

    def _expire(self) -> None:
        now = self._clock()
        ended = {lease for lease, expiry in self._leases.items() if expiry <= now}
        if not ended:
            return
        for lease in ended:
            del self._leases[lease]
        gone = [key for key, entry in self._entries.items() if entry.lease in ended]
        if gone:
            self.revision += 1
            for key in gone:
                del self._entries[key]
            self._publish({key: None for key in gone})

    def _publish(self, changes: dict[str, bytes | None]) -> None:
        update = ConfigUpdate(self.revision, changes, False)
        for deliver in list(self._subscribers):
            deliver(update)

    def _write(self, key: str, value: bytes, lease: int | None) -> None:
        if lease is not None and lease not in self._leases:
            raise StoreUnavailableError("etcd", f"lease {lease} not found")
        self.revision += 1
        self._entries[key] = _Entry(value, self.revision, lease)
        self._publish({key: value})

    async def grant_lease(self, ttl_seconds: int) -> int:
        """Create a lease that ends after `ttl_seconds`; returns its id."""
        self._check()
        self._last_lease += 1
        lease = self._last_lease
        self._leases[lease] = self._clock() + ttl_seconds
        return lease

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        """Write `key`; bound to `lease` when given."""
        self._check()
        self._write(key, value, lease)

    async def put_leased(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Write `key` bound to a new lease of `ttl_seconds`."""
        await self.put(key, value, lease=await self.grant_lease(ttl_seconds))

    async def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        self._check()
        if self._entries.pop(key, None) is None:
            return False
        self.revision += 1
        self._publish({key: None})
        return True

    async def create_if_absent(self, key: str, value: bytes) -> bool:
        """Write `key` only if it does not exist; True if this call created it."""
        self._check()
        if key in self._entries:
            return False
        self._write(key, value, None)
        return True

    async def put_if_others_unchanged(
        self, key: str, value: bytes, *, directory: str, since_revision: int, lease: int
    ) -> bool:
        """Write `key` only if no other key of `directory` changed after `since_revision`."""
        self._check()
        for other, entry in self._entries.items():
            if other != key and other.startswith(directory) and entry.mod_revision > since_revision:
                return False
        self._write(key, value, lease)
        return True

    async def read_dir(self, directory: str) -> DirectoryRead:
        """Every key under `directory` with its mod revision, and the read's revision."""
        self._check()
        entries = {
            key[len(directory) :]: StoredValue(entry.value, entry.mod_revision)
            for key, entry in self._entries.items()
            if key.startswith(directory)
        }
        return DirectoryRead(self.revision, entries)
