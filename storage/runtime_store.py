"""The runtime-state port: the few writes replicas use to share state through etcd.

Cooldowns, preference invalidations, the decision-signing key and quota publications are
keys under `runtime/` (see server/runtime/keys.py); replicas read them back through the
config watch. `RuntimeStore` is the only interface the server uses to write them, with two
implementations: `EtcdRuntimeStore` (production) and `InMemoryRuntimeStore`
(storage/memory_runtime_store.py; unit tests of the algorithms on top). Keys are
relative to the store's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aetcd
from aetcd.utils import prefix_range_end

from .errors import StoreUnavailableError
from .etcd import ETCD_FAILURES as _ETCD_FAILURES
from .updates import StoredValue


@dataclass(frozen=True, slots=True)
class DirectoryRead:
    """Every key under a directory (names relative to it) and the revision read at."""

    revision: int
    entries: dict[str, StoredValue]


class RuntimeStore(Protocol):
    """Writes of shared runtime state. Failures raise `StoreUnavailableError`."""

    async def grant_lease(self, ttl_seconds: int) -> int:
        """Create a lease that ends after `ttl_seconds`; returns its id."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        """Write `key`; bound to `lease` (deleted when it ends) when given."""
        ...

    async def put_leased(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Write `key` bound to a new lease of `ttl_seconds`."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        ...

    async def create_if_absent(self, key: str, value: bytes) -> bool:
        """Write `key` only if it does not exist; True if this call created it."""
        ...

    async def put_if_others_unchanged(
        self, key: str, value: bytes, *, directory: str, since_revision: int, lease: int
    ) -> bool:
        """Write `key` only if no other key of `directory` changed after `since_revision`.

        Returns True if written.
        """
        ...

    async def read_dir(self, directory: str) -> DirectoryRead:
        """Every key under `directory` with its mod revision, and the read's revision."""
        ...


def _unavailable(exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError("etcd", str(exc) or type(exc).__name__)


class EtcdRuntimeStore:
    """`RuntimeStore` on an aetcd client, with keys under `prefix`."""

    def __init__(self, client: aetcd.Client, prefix: str) -> None:
        """Use `client` for keys under `prefix` (e.g. `/modelroute/`)."""
        self._client = client
        self.prefix = prefix

    def _key(self, key: str) -> bytes:
        return f"{self.prefix}{key}".encode()

    async def grant_lease(self, ttl_seconds: int) -> int:
        """Create a lease that ends after `ttl_seconds`; returns its id."""
        try:
            lease = await self._client.lease(ttl_seconds)
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc
        return int(lease.id)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        """Write `key`; bound to `lease` (deleted when it ends) when given."""
        try:
            await self._client.put(self._key(key), value, lease=lease)
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def put_leased(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Write `key` bound to a new lease of `ttl_seconds`."""
        await self.put(key, value, lease=await self.grant_lease(ttl_seconds))

    async def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        try:
            result = await self._client.delete(self._key(key))
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc
        return bool(result and result.deleted)

    async def create_if_absent(self, key: str, value: bytes) -> bool:
        """Write `key` only if it does not exist; True if this call created it."""
        full_key = self._key(key)
        tx = self._client.transactions
        try:
            created, _ = await self._client.transaction(
                compare=[tx.create(full_key) == 0], success=[tx.put(full_key, value)], failure=[]
            )
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc
        return bool(created)

    async def put_if_others_unchanged(
        self, key: str, value: bytes, *, directory: str, since_revision: int, lease: int
    ) -> bool:
        """Write `key` only if no other key of `directory` changed after `since_revision`."""
        start, own = self._key(directory), self._key(key)
        tx = self._client.transactions
        unchanged = [  # every key of the directory but `key` itself: before it, and after it
            tx.mod(start, range_end=own) < since_revision + 1,
            tx.mod(own + b"\0", range_end=prefix_range_end(start)) < since_revision + 1,
        ]
        try:
            succeeded, _ = await self._client.transaction(
                compare=unchanged, success=[tx.put(own, value, lease=lease)], failure=[]
            )
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc
        return bool(succeeded)

    async def read_dir(self, directory: str) -> DirectoryRead:
        """Every key under `directory` with its mod revision, and the read's revision."""
        start = self._key(directory)
        try:
            result = await self._client.get_prefix(start)
        except _ETCD_FAILURES as exc:
            raise _unavailable(exc) from exc
        entries = {
            kv.key[len(start) :].decode(): StoredValue(kv.value, kv.mod_revision)
            for kv in result.kvs
        }
        return DirectoryRead(result.header.revision, entries)
