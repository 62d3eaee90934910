"""In-process caches: resolved decisions (TTL + LRU) and provider client objects (LRU)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .decision import Decision

V = TypeVar("V")


class DecisionCache:
    """Bounded LRU of decisions, each kept for the server's `cache_ttl`.

    Only touched from the router's event loop, so it needs no lock. `clock` is injectable
    so tests (and callers with their own time source) stay deterministic.
    """

    def __init__(self, maxsize: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Decision]] = OrderedDict()

    def get(self, key: Hashable) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    def put(self, key: Hashable, decision: Decision) -> None:
        if decision.cache_ttl <= 0 or self.maxsize <= 0:
            return  # the server said "ask me every time"
        self._entries[key] = (self._clock() + decision.cache_ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def drop_model(self, model_id: str) -> None:
        """Forget decisions that serve `model_id` (it just failed with a cooldown outcome).

        Cooldowns are runtime state, not a config revision, so no WatchConfig event comes.
        """
        for key in [k for k, (_, d) in self._entries.items() if d.model_id == model_id]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class LastKnown:
    """Bounded LRU of the latest server answer per request key and per context.

    Kept without expiry: the fail-safe answer while the control plane is unreachable.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._by_key: OrderedDict[Hashable, Decision] = OrderedDict()
        self._by_context: OrderedDict[str, Decision] = OrderedDict()

    def remember(self, key: Hashable, decision: Decision) -> None:
        _put_bounded(self._by_key, key, decision, self.maxsize)
        _put_bounded(self._by_context, decision.context, decision, self.maxsize)

    def lookup(self, key: Hashable, context: str) -> Decision | None:
        """The exact request's last answer, else the last answer for the context."""
        return self._by_key.get(key) or self._by_context.get(context)


K = TypeVar("K", bound=Hashable)


def _put_bounded(table: OrderedDict[K, Decision], key: K, value: Decision, maxsize: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > maxsize:
        table.popitem(last=False)


class ModelClientCache(Generic[V]):
    """LRU of provider client objects (SDK clients, HTTP sessions) keyed by model id.

    Building a provider client is often slow (TLS, auth); this keeps one per model and
    lets you drop them when keys rotate or a model's endpoint changes. Thread-safe.
    """

    def __init__(
        self,
        factory: Callable[[str], V],
        maxsize: int = 32,
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        self._factory = factory
        self.maxsize = maxsize
        self._on_evict = on_evict
        self._clients: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str) -> V:
        """The client for `model_id`, built by the factory on first use."""
        with self._lock:
            if model_id in self._clients:
                self._clients.move_to_end(model_id)
                return self._clients[model_id]
        client = self._factory(model_id)  # outside the lock: factories may be slow
        evicted: list[tuple[str, V]] = []
        with self._lock:
            existing = self._clients.get(model_id)
            if existing is not None:  # another thread won the race; keep its client
                evicted.append((model_id, client))
                client = existing
            else:
                self._clients[model_id] = client
            while len(self._clients) > self.maxsize:
                evicted.append(self._clients.popitem(last=False))
        self._evict(evicted)
        return client

    def invalidate(self, model_id: str | None = None) -> None:
        """Drop one model's client, or every client when `model_id` is None."""
        with self._lock:
            if model_id is None:
                evicted = list(self._clients.items())
                self._clients.clear()
            elif model_id in self._clients:
                evicted = [(model_id, self._clients.pop(model_id))]
            else:
                evicted = []
        self._evict(evicted)

    def _evict(self, evicted: list[tuple[str, V]]) -> None:
        if self._on_evict is not None:
            for model_id, client in evicted:
                self._on_evict(model_id, client)

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._clients

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)
