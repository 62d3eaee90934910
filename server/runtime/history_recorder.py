"""Records every change of a decision-shaping key into `config_changes`, from the same
etcd watch that feeds the snapshot.

Every replica records what it sees; the table's unique (revision, key) keeps one row per
change however many replicas insert it. The value before a change is this replica's last
seen value (the watch delivers revisions in order after one full read). After a full read
(start, reconnect, compaction) the read is compared with the recorded state: changes made
while no replica watched are recorded at their mod revision, deletions at the read's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.history_store import START_MARKER, ChangeRecord, HistoryStore
from modelroute.storage.updates import ConfigUpdate

from ..core.config_values import KIND_MESSAGES, SINGLETON_KINDS
from ..core.rollout_spec import PROGRESS_DIR
from ..core.snapshot import DEFAULT_HISTORY_DAYS
from .change_meta import ACTOR_ETCD, META_KEY, parse_meta

log = logging.getLogger("modelroute.history")

# Key kinds whose values shape decisions (`rollouts/` is recorded even before this
# version knows how to validate it).
DECISION_KINDS: Final = tuple(dict.fromkeys([*KIND_MESSAGES, "rollouts"]))
# Plus the rollout controller's progress (`runtime/rollouts/<id>`): the candidate's share
# shapes decisions as much as any operator key, and its changes are the controller's
# (actor `rollout-controller`, from the companion key it writes in the same transaction).
DECISION_DIRS: Final = (
    *(k if k in SINGLETON_KINDS else f"{k}/" for k in DECISION_KINDS),
    PROGRESS_DIR,
)
SECRET_FIELDS: Final = {"clients": ("key_sha256", "keySha256")}
REDACTED_PREFIX: Final = "<redacted "
PRUNE_INTERVAL_SECONDS: Final = 3600.0


def is_decision_key(key: str) -> bool:
    return key in SINGLETON_KINDS or (key.startswith(DECISION_DIRS) and "/" in key)


def secret_fingerprint(secret: str) -> str:
    """Tells two secrets apart without revealing either (rollback matches on it)."""
    return hashlib.sha256(b"modelroute-history/" + secret.encode()).hexdigest()[:12]


def redact(key: str, raw: bytes | None) -> str | None:
    """The value as stored in history: secrets of `clients/` values replaced by a marker."""
    if raw is None:
        return None
    text = raw.decode(errors="replace")
    fields = SECRET_FIELDS.get(key.split("/", 1)[0])
    if not fields:
        return text
    try:
        data = json.loads(raw)
    except ValueError:
        return "<redacted: not JSON>"
    if not isinstance(data, dict):
        return text
    for field in fields:
        if isinstance(data.get(field), str):
            data[field] = f"{REDACTED_PREFIX}{secret_fingerprint(data[field])}>"
    return json.dumps(data, sort_keys=True)


class HistoryRecorder:
    """Fed by ConfigManager's `on_update` (synchronous, in watch order); writes in a task."""

    def __init__(
        self,
        store: HistoryStore,
        *,
        history_days: Callable[[], int] = lambda: DEFAULT_HISTORY_DAYS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self._history_days = history_days
        self._clock = clock
        self._queue: asyncio.Queue[ConfigUpdate] = asyncio.Queue()
        self._state: dict[str, bytes] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def on_update(self, update: ConfigUpdate) -> None:
        if update.full_state or any(is_decision_key(k) for k in update.changes):
            self._idle.clear()
            self._queue.put_nowait(update)

    async def wait_idle(self) -> None:
        """Until everything seen so far is recorded (tests, shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            update = await self._queue.get()
            while True:  # never drop an update: retry until the database takes it
                try:
                    await asyncio.to_thread(self._process, update)
                    backoff = 0.1
                    break
                except StoreUnavailableError as exc:
                    log.warning("cannot record config history (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if self._queue.empty():
                self._idle.set()

    async def prune_periodically(self) -> None:
        while True:
            try:
                days = self._history_days()
                removed = await asyncio.to_thread(
                    self.store.prune, self._clock() - timedelta(days=days)
                )
                if removed:
                    log.info("config history: pruned %d row(s) older than %d days", removed, days)
            except StoreUnavailableError as exc:
                log.warning("cannot prune config history: %s", type(exc).__name__)
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

    # --- runs in a worker thread, one update at a time ----------------------------------

    def _process(self, update: ConfigUpdate) -> None:
        if update.full_state:
            rows = self._resync_rows(update)
            self._state = {k: v for k, v in update.changes.items() if v and is_decision_key(k)}
        else:
            rows = self._watched_rows(update)
        stored = self.store.record(rows)
        if stored:
            log.debug("recorded %d config change(s) at revision %d", stored, update.revision)

    def _watched_rows(self, update: ConfigUpdate) -> list[ChangeRecord]:
        meta = parse_meta(update.changes.get(META_KEY))
        at = meta.at if meta else self._clock()
        rows = []
        for key, value in sorted(update.changes.items()):
            if not is_decision_key(key):
                continue
            before = self._state.get(key)
            if before == value:
                continue
            rows.append(
                ChangeRecord(
                    update.revision,
                    at,
                    key,
                    redact(key, before),
                    redact(key, value),
                    meta.actor if meta else ACTOR_ETCD,
                    meta.note if meta else "",
                )
            )
            if value is None:
                self._state.pop(key, None)
            else:
                self._state[key] = value
        return rows

    def _resync_rows(self, update: ConfigUpdate) -> list[ChangeRecord]:
        now = self._clock()
        revisions = update.key_revisions or {}
        meta = parse_meta(update.changes.get(META_KEY))
        meta_revision = revisions.get(META_KEY, -1)

        def writer(revision: int, fallback_note: str) -> tuple[str, str, datetime]:
            if meta is not None and revision == meta_revision:
                return meta.actor, meta.note, meta.at
            return ACTOR_ETCD, fallback_note, now

        current = {k: v for k, v in update.changes.items() if v is not None and is_decision_key(k)}
        rows: list[ChangeRecord] = []
        if self.store.is_empty():
            rows.append(
                ChangeRecord(
                    update.revision,
                    now,
                    START_MARKER,
                    None,
                    None,
                    "modelroute",
                    "recording started",
                )
            )
            for key, value in sorted(current.items()):
                revision = revisions.get(key, update.revision)
                actor, note, at = writer(revision, "in force when history recording started")
                rows.append(ChangeRecord(revision, at, key, None, redact(key, value), actor, note))
            return rows
        # History as of the read: a newer row another replica recorded since (this update
        # may be processed late) is not contradicted by the older full state.
        recorded = self.store.latest_per_key(at_revision=update.revision)
        unseen = "changed while no replica was watching (seen at resync)"
        for key, value in sorted(current.items()):
            revision = revisions.get(key, update.revision)
            last = recorded.get(key)
            if last is not None and last.revision >= revision:
                continue
            actor, note, at = writer(revision, unseen)
            before = last.value_after if last is not None else None
            after = redact(key, value)
            if before != after:
                rows.append(ChangeRecord(revision, at, key, before, after, actor, note))
        for key, last in sorted(recorded.items()):
            if last.value_after is not None and key not in current and is_decision_key(key):
                rows.append(
                    ChangeRecord(
                        update.revision, now, key, last.value_after, None, ACTOR_ETCD, unseen
                    )
                )
        return rows
