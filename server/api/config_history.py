"""Config history operations (AdminService ListConfigChanges / GetConfigAt /
RollbackConfig, the admin HTTP API, the dashboard): transport-free, raise ServiceError.

A rollback rebuilds the state at a revision from `config_changes` (so it works long after
etcd compacted that revision), diffs it against what etcd holds now, validates the result
with the servers' own builder, and writes it in one transaction guarded on the revision it
read: a concurrent change makes it fail whole (ABORTED), never half-written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.etcd import (
    EtcdClient,
    EtcdConflictError,
    head_revision,
    read_prefix,
    write_changes,
)
from modelroute.storage.history_store import ChangeRecord, HistoryStore

from ..core.config_values import RUNTIME_KIND
from ..core.snapshot import DEFAULT_HISTORY_DAYS, Snapshot
from ..runtime.change_meta import (
    CHANGE_GUARD,
    CURRENT_ACTOR,
    MAX_NOTE_CHARS,
    META_KEY,
    with_change_meta,
)
from ..runtime.history_recorder import (
    DECISION_DIRS,
    REDACTED_PREFIX,
    is_decision_key,
    redact,
    secret_fingerprint,
)
from .config_apply import plan
from .errors import ServiceError, invalid_argument, store_unavailable
from .validation import timestamp_value

MAX_CHANGES = 1000
T = TypeVar("T")
CONFLICT_MESSAGE = "the configuration changed since you loaded it"


def conflict(base_revision: int) -> ServiceError:
    """ABORTED: a guarded write found the configuration changed after `base_revision`
    (0: the revision the server read itself)."""
    since = f" (it changed after revision {base_revision})" if base_revision else ""
    return ServiceError(
        grpc.StatusCode.ABORTED,
        "CONFIG_CONFLICT",
        f"{CONFLICT_MESSAGE}{since}; nothing was written: reload and try again",
        metadata={"base_revision": str(base_revision)},
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def change_message(record: ChangeRecord) -> admin_pb2.ConfigChange:
    change = admin_pb2.ConfigChange(
        revision=record.revision,
        changed_at=_timestamp(record.changed_at),
        key=record.key,
        actor=record.actor,
        note=record.note,
    )
    if record.value_before is not None:
        change.value_before_json = record.value_before
    if record.value_after is not None:
        change.value_after_json = record.value_after
    return change


def restore_value(key: str, recorded: str, current: bytes | None) -> bytes | None:
    """The bytes to write to bring `key` back to a recorded (possibly redacted) value; None
    when a redacted secret is not the one etcd holds now (history does not keep secrets)."""
    if REDACTED_PREFIX not in recorded:
        return recorded.encode()
    try:
        wanted = json.loads(recorded)
        held = json.loads(current) if current is not None else {}
    except ValueError:
        return None
    if not isinstance(wanted, dict) or not isinstance(held, dict):
        return None
    for field, value in list(wanted.items()):
        if isinstance(value, str) and value.startswith(REDACTED_PREFIX):
            secret = held.get(field)
            if not isinstance(secret, str) or value != (
                f"{REDACTED_PREFIX}{secret_fingerprint(secret)}>"
            ):
                return None
            wanted[field] = secret
    return json.dumps(wanted, sort_keys=True).encode()


class ConfigHistory:
    def __init__(
        self,
        store: HistoryStore,
        etcd: EtcdClient,
        prefix: str,
        snapshot: Callable[[], Snapshot | None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self._etcd = etcd
        self._prefix = prefix
        self._snapshot = snapshot
        self._clock = clock

    async def _db(self, call: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(call, *args)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None

    def _retention_start(self) -> datetime:
        snapshot = self._snapshot()
        days = snapshot.settings.history_days if snapshot else DEFAULT_HISTORY_DAYS
        return self._clock() - timedelta(days=days)

    async def oldest_revision(self) -> int:
        oldest = await self._db(self.store.oldest_revision, self._retention_start())
        return oldest or 0

    async def _require_kept(self, revision: int) -> int:
        oldest = await self.oldest_revision()
        if not oldest or revision < oldest:
            kept = f"the oldest kept is {oldest}" if oldest else "no history is recorded yet"
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                "REVISION_NOT_IN_HISTORY",
                f"revision {revision} is older than the config history kept; {kept} "
                "(settings.history_days)",
                metadata={"oldest_revision": str(oldest)},
            )
        return oldest

    async def _require_exists(self, revision: int) -> None:
        try:
            # Any read tells etcd's current revision; this one returns at most one key.
            head = await head_revision(self._etcd, self._prefix + META_KEY)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        if revision > head:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                "REVISION_NOT_IN_HISTORY",
                f"revision {revision} does not exist yet (etcd is at {head})",
            )

    async def list_changes(
        self, request: admin_pb2.ListConfigChangesRequest
    ) -> admin_pb2.ListConfigChangesResponse:
        limit = request.limit or 100
        if not 0 < limit <= MAX_CHANGES:
            raise invalid_argument([("limit", f"between 1 and {MAX_CHANGES}")])
        if request.up_to_revision < 0:
            raise invalid_argument([("up_to_revision", "must be >= 0")])
        since = timestamp_value("since", request.since) if request.HasField("since") else None
        records = await self._db(
            lambda: self.store.changes(
                key_prefix=request.key_prefix,
                since=since,
                up_to_revision=request.up_to_revision or None,
                limit=limit,
            )
        )
        return admin_pb2.ListConfigChangesResponse(
            changes=[change_message(r) for r in records],
            oldest_revision=await self.oldest_revision(),
        )

    async def config_at(
        self, request: admin_pb2.GetConfigAtRequest
    ) -> admin_pb2.GetConfigAtResponse:
        if request.revision < 0:
            raise invalid_argument([("revision", "must be >= 0 (0: the newest)")])
        revision = request.revision or await self._db(self.store.latest_revision)
        oldest = await self._require_kept(revision)
        if request.revision:
            await self._require_exists(request.revision)
        values = await self._db(self.store.state_at, revision)
        return admin_pb2.GetConfigAtResponse(
            revision=revision, values_json=values, oldest_revision=oldest
        )

    async def rollback(
        self, request: admin_pb2.RollbackConfigRequest
    ) -> admin_pb2.RollbackConfigResponse:
        if request.revision <= 0:
            raise invalid_argument([("revision", "the revision to go back to is required")])
        if len(request.note) > MAX_NOTE_CHARS:
            raise invalid_argument([("note", f"at most {MAX_NOTE_CHARS} characters")])
        await self._require_kept(request.revision)
        try:
            base_revision, stored = await read_prefix(self._etcd, self._prefix)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        if request.revision > base_revision:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                "REVISION_NOT_IN_HISTORY",
                f"revision {request.revision} does not exist yet (etcd is at {base_revision})",
            )
        target = await self._db(self.store.state_at, request.revision)
        current = {k: v.value for k, v in stored.items()}
        changes: dict[str, bytes | None] = {}
        unrestorable: list[str] = []
        for key in sorted({k for k in current if is_decision_key(k)} | set(target)):
            if key in stored and stored[key].mod_revision <= request.revision:
                # Unchanged since REV: its value at REV is the one etcd holds (true even
                # if the history has not recorded that write yet).
                continue
            have, want = current.get(key), target.get(key)
            if want is None:
                if have is not None:
                    changes[key] = None
                continue
            if have is not None and redact(key, have) == want:
                continue
            raw = restore_value(key, want, have)
            if raw is None:
                unrestorable.append(key)
            else:
                changes[key] = raw
        if unrestorable:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "SECRET_NOT_IN_HISTORY",
                f"cannot restore {', '.join(unrestorable)}: the API key hash changed since "
                f"revision {request.revision} and history does not keep secrets; re-create "
                "those clients by hand, then roll back",
                precondition_violations=[
                    ("SECRET_NOT_IN_HISTORY", key, "secret changed since") for key in unrestorable
                ],
            )
        config_now = {k: v for k, v in current.items() if not k.startswith(RUNTIME_KIND + "/")}
        result = plan(config_now, base_revision, changes)
        if not result.ok:
            raise invalid_argument([(r.key, r.error) for r in result.rejections])
        response = admin_pb2.RollbackConfigResponse(
            diff=result.diff, changed_keys=len(result.changes), base_revision=base_revision
        )
        if request.dry_run or not result.changes:
            return response
        guard = request.expected_revision or base_revision
        note = f"rollback to revision {request.revision}" + (
            f": {request.note}" if request.note else ""
        )
        writes = with_change_meta(result.changes, CURRENT_ACTOR.get(), note)
        try:
            response.revision = await write_changes(
                self._etcd, self._prefix, writes, guard, (*DECISION_DIRS, *CHANGE_GUARD)
            )
        except EtcdConflictError:
            raise conflict(guard) from None
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        return response
