"""Per-user preferred models: the database is the record, a bounded LRU serves resolves,
and etcd carries invalidations between replicas.

A change through any replica writes the row, drops the user from its own cache, and puts
`runtime/preferences/<user hash>` (leased; the value is only a timestamp). Every replica
sees that key through the config watch and drops the user, so the next resolve reads the
new row: a change applies everywhere within a watch round trip. If etcd cannot be written,
entries also expire after `ENTRY_TTL`, which bounds staleness. A resync of the watch
(reconnect, compaction) clears the whole cache, since invalidations may have been missed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from datetime import datetime
from typing import Final

from modelroute.storage.preference_store import PreferenceStore, StoredPreference
from modelroute.storage.runtime_store import RuntimeStore
from modelroute.storage.updates import ConfigUpdate

from .keys import PREFERENCES_DIR

log = logging.getLogger("modelroute.preferences")
ENTRY_TTL: Final = 60.0  # seconds; the bound on staleness when etcd cannot carry a change
INVALIDATION_LEASE: Final = 600  # seconds an invalidation key lives in etcd
DEFAULT_CAPACITY: Final = 100_000  # users


@functools.lru_cache(maxsize=4096)  # the busiest users: no hashing on their every resolve
def user_key(user_id: str) -> str:
    """Stable, fixed-length etcd key part; user ids never appear in etcd."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:32]


class PreferenceCache:
    def __init__(self, store: PreferenceStore, capacity: int = DEFAULT_CAPACITY) -> None:
        self._store = store
        self._capacity = capacity
        # user hash → (loaded at, monotonic; preferences by context)
        self._entries: OrderedDict[str, tuple[float, dict[str, StoredPreference]]] = OrderedDict()
        self._generation = 0  # bumped by every invalidation: a racing load is not cached
        self.hits = 0
        self.misses = 0

    async def for_user(self, user_id: str) -> dict[str, StoredPreference]:
        key = user_key(user_id)
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < ENTRY_TTL:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        generation = self._generation
        preferences = await asyncio.to_thread(self._store.for_user, user_id)
        if generation == self._generation:
            self._entries[key] = (time.monotonic(), preferences)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return preferences

    async def preferred_model(self, user_id: str, context: str) -> str | None:
        """The context's preference, else the user's all-contexts one."""
        preferences = await self.for_user(user_id)
        chosen = preferences.get(context) or preferences.get("")
        return chosen.model_id if chosen is not None else None

    def invalidate(self, key: str) -> None:
        self._generation += 1
        self._entries.pop(key, None)

    def apply_update(self, update: ConfigUpdate) -> None:
        if update.full_state:
            self._generation += 1
            self._entries.clear()
        for changed in update.changes:
            if changed.startswith(PREFERENCES_DIR):
                self.invalidate(changed[len(PREFERENCES_DIR) :])

    async def set(self, preference: StoredPreference, runtime: RuntimeStore | None) -> None:
        await asyncio.to_thread(self._store.set, preference)
        await self._announce(preference.user_id, preference.updated_at, runtime)

    async def _announce(self, user_id: str, at: datetime, runtime: RuntimeStore | None) -> None:
        key = user_key(user_id)
        self.invalidate(key)
        if runtime is None:
            return
        try:
            value = json.dumps({"updated_at": at.isoformat()}).encode()
            await runtime.put_leased(f"{PREFERENCES_DIR}{key}", value, INVALIDATION_LEASE)
        except Exception as exc:  # noqa: BLE001 - stored; other replicas catch up by TTL
            log.warning(
                "preference stored, but other replicas will see it only within %.0f s (etcd: %s)",
                ENTRY_TTL,
                exc,
            )
