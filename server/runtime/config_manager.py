"""Owns the served snapshot: consumes a config source, builds snapshots, swaps one reference.

The reload task is the only writer; request handlers read `current` (one attribute load,
no lock). Rejections are logged, counted, attached to the reload span as events and kept
for `GetConfigStatus`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final

from google.protobuf import json_format
from modelroute.storage.updates import ConfigSource, ConfigUpdate
from opentelemetry import metrics, trace

from ..core.snapshot import Rejection, Snapshot, SnapshotBuilder
from .keys import QUIET_RUNTIME_KEYS

log = logging.getLogger("modelroute.config")
tracer = trace.get_tracer("modelroute.config")
meter = metrics.get_meter("modelroute.config")
_rejected_counter = meter.create_counter(
    "modelroute.config.rejected_values", description="Config values rejected on reload"
)
_reload_counter = meter.create_counter(
    "modelroute.config.reloads", description="Config snapshots applied"
)
LAST_GOOD_FORMAT: Final = 1


class ConfigManager:
    def __init__(
        self,
        source: ConfigSource,
        env_overrides: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_update: Callable[[ConfigUpdate], None] | None = None,
        on_rejection: Callable[[Rejection], None] | None = None,
        last_good_file: Path | None = None,
    ) -> None:
        self.source = source
        self._builder = SnapshotBuilder(env_overrides=env_overrides)
        self._clock = clock
        self._on_update = on_update
        self._on_rejection = on_rejection
        self.current: Snapshot | None = None
        self.rejected_total = 0
        self._changed = asyncio.Condition()
        self._first = asyncio.Event()
        self.last_good_file = last_good_file
        # Set while serving from the local last-good file (etcd unreachable at start).
        self.from_file_since: datetime | None = None
        self._saving: asyncio.Task[None] | None = None
        self._save_again = False

    async def run(self) -> None:
        async for update in self.source.updates():
            if self._on_update is not None:
                self._on_update(update)  # runtime state (cooldowns, counters) rides the same watch
            if (
                not update.full_state
                and self.current is not None
                and all(key.startswith(QUIET_RUNTIME_KEYS) for key in update.changes)
            ):
                continue
            self.apply(update)
            if self.from_file_since is not None:
                log.warning("etcd reachable again: serving etcd revision %d", update.revision)
                self.from_file_since = None
            self._schedule_save()

    # --- last-good snapshot file (outages) ---------------------------------------------

    def _schedule_save(self) -> None:
        if self.last_good_file is None:
            return
        if self._saving is not None and not self._saving.done():
            self._save_again = True  # coalesce bursts: one write after the current one
            return
        self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        while True:
            self._save_again = False
            snapshot = self.current
            if snapshot is None or self.last_good_file is None:
                return
            values = {
                key: json_format.MessageToJson(message, indent=None)
                for key, message in self._builder.valid_json().items()
            }
            document = {
                "format": LAST_GOOD_FORMAT,
                "revision": snapshot.revision,
                "saved_at": self._clock().isoformat(),
                "values": values,
            }
            try:
                await asyncio.to_thread(_write_atomically, self.last_good_file, document)
            except OSError as exc:
                log.warning("could not save last-good config to %s: %s", self.last_good_file, exc)
            if not self._save_again:
                return

    def load_last_good(self) -> bool:
        """Serve the local last-good file (called when etcd is unreachable at start).
        False if there is none, or once etcd has delivered a snapshot."""
        if self.current is not None or self.last_good_file is None:
            return False
        try:
            document = json.loads(self.last_good_file.read_text())
            if document.get("format") != LAST_GOOD_FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
            revision = int(document["revision"])
            changes = {str(k): str(v).encode() for k, v in document["values"].items()}
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("last-good config %s is unusable: %s", self.last_good_file, exc)
            return False
        self.apply(ConfigUpdate(revision, changes, full_state=True))
        self.from_file_since = self._clock()
        log.warning(
            "etcd unreachable at start: serving last-good config (revision %d, saved %s) "
            "from %s until etcd is back",
            revision,
            document.get("saved_at", "?"),
            self.last_good_file,
        )
        return True

    def apply(self, update: ConfigUpdate) -> Snapshot:
        revision = update.revision
        if update.full_state and update.key_revisions:
            # The revision of the newest change that shapes decisions, as the incremental
            # path reports it: quiet runtime keys (counters, the decision key) must not
            # make a resync look like a config change.
            revision = max(
                (
                    r
                    for k, r in update.key_revisions.items()
                    if not k.startswith(QUIET_RUNTIME_KEYS)
                ),
                default=update.revision,
            )
        with tracer.start_as_current_span("modelroute.config.reload") as span:
            span.set_attribute("modelroute.config_revision", revision)
            span.set_attribute("modelroute.config.full_state", update.full_state)
            span.set_attribute("modelroute.config.changed_keys", len(update.changes))
            snapshot, rejections = self._builder.apply(
                revision, update.changes, self._clock(), full_state=update.full_state
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
        if self._on_rejection is not None:
            self._on_rejection(rejection)

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


def _write_atomically(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(temporary, path)  # readers see the old file or the new one, never half


def _is_replaced(manager: ConfigManager, snapshot: Snapshot) -> bool:
    return manager.current is not snapshot
