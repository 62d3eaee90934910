"""Owns the served snapshot: consumes a config source, builds snapshots, swaps one reference.

The reload task is the only writer; request handlers read `current` (one attribute load,
no lock). Rejections are logged, counted, attached to the reload span as events and kept
for `GetConfigStatus`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from modelroute.server.snapshot import Rejection, Snapshot, SnapshotBuilder
from modelroute.storage.etcd import ConfigUpdate
from opentelemetry import metrics, trace

log = logging.getLogger("modelroute.config")
tracer = trace.get_tracer("modelroute.config")
meter = metrics.get_meter("modelroute.config")
_rejected_counter = meter.create_counter(
    "modelroute.config.rejected_values", description="Config values rejected on reload"
)
_reload_counter = meter.create_counter(
    "modelroute.config.reloads", description="Config snapshots applied"
)


class ConfigSource(Protocol):
    """Anything that yields config updates (etcd in production; one small interface)."""

    connected: bool
    disconnected_since: datetime | None

    def updates(self) -> AsyncIterator[ConfigUpdate]: ...


class ConfigManager:
    def __init__(
        self,
        source: ConfigSource,
        env_overrides: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_update: Callable[[ConfigUpdate], None] | None = None,
    ) -> None:
        self.source = source
        self._builder = SnapshotBuilder(env_overrides=env_overrides)
        self._clock = clock
        self._on_update = on_update
        self.current: Snapshot | None = None
        self.rejected_total = 0
        self._changed = asyncio.Condition()
        self._first = asyncio.Event()

    async def run(self) -> None:
        async for update in self.source.updates():
            if self._on_update is not None:
                self._on_update(update)  # runtime state (cooldowns, counters) rides the same watch
            self.apply(update)

    def apply(self, update: ConfigUpdate) -> Snapshot:
        with tracer.start_as_current_span("modelroute.config.reload") as span:
            span.set_attribute("modelroute.config_revision", update.revision)
            span.set_attribute("modelroute.config.full_state", update.full_state)
            span.set_attribute("modelroute.config.changed_keys", len(update.changes))
            snapshot, rejections = self._builder.apply(
                update.revision, update.changes, self._clock(), full_state=update.full_state
            )
            for rejection in rejections:
                self._record_rejection(span, rejection)
            span.set_attribute("modelroute.config.rejected_keys", len(rejections))
        self.current = snapshot  # the one swap
        _reload_counter.add(1)
        self._first.set()
        asyncio.get_running_loop().create_task(self._notify())
        return snapshot

    def _record_rejection(self, span: trace.Span, rejection: Rejection) -> None:
        self.rejected_total += 1
        kept = "previous value stays in force" if rejection.previous_in_force else "key ignored"
        log.warning(
            "config value rejected: %s at revision %d: %s (%s)",
            rejection.key,
            rejection.revision,
            rejection.error,
            kept,
        )
        _rejected_counter.add(1, {"modelroute.config.kind": rejection.key.split("/", 1)[0]})
        span.add_event(
            "config.value_rejected",
            {"modelroute.config.key": rejection.key, "modelroute.config.error": rejection.error},
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_ready(self, timeout: float | None = None) -> Snapshot:
        await asyncio.wait_for(self._first.wait(), timeout)
        assert self.current is not None
        return self.current

    async def revisions(self) -> AsyncIterator[Snapshot]:
        """The current snapshot, then each newly applied one (for WatchConfig)."""
        await self._first.wait()
        last = -1
        while True:
            snapshot = self.current
            assert snapshot is not None
            if snapshot.revision != last:
                last = snapshot.revision
                yield snapshot
            async with self._changed:
                await self._changed.wait_for(partial(_is_replaced, self, snapshot))


def _is_replaced(manager: ConfigManager, snapshot: Snapshot) -> bool:
    return manager.current is not snapshot
