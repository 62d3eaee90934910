"""PreviewConfigChange / `config apply --impact`: what a proposed change would do to the
traffic recorded in a window. Reads etcd and the database, writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.database import Engine
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.etcd import EtcdClient, read_prefix
from modelroute.storage.replay_store import all_preferences, window_usage

from ..core.config_values import RUNTIME_KIND
from ..core.impact import (
    ANY_USER,
    ContextImpact,
    UsageGroup,
    replay,
    user_independent,
)
from ..core.snapshot import Snapshot, SnapshotBuilder
from .config_apply import plan
from .errors import invalid_argument, store_unavailable

DEFAULT_WINDOW: Final = timedelta(hours=24)
MAX_WINDOW: Final = timedelta(days=90)
CAVEATS: Final = (
    "runtime state is not replayed: cooldowns, provider quotas and budgets are taken as "
    "not in force",
    "calls without a user id are replayed as such: experiments bucketed by user skip them",
    "request ids are not recorded: experiments bucketed by request are replayed as if the "
    "call were outside them",
    "user preferences are the ones stored now; env MODEL_<CONTEXT> pins are not applied",
)


def key_changes(changes: list[admin_pb2.KeyChange]) -> dict[str, bytes | None]:
    """ApplyConfig-style changes → relative key → value (None: delete); INVALID_ARGUMENT
    for keys outside the config."""
    out: dict[str, bytes | None] = {}
    for index, change in enumerate(changes):
        if not change.key or change.key.startswith(("/", RUNTIME_KIND + "/")):
            raise invalid_argument(
                [(f"changes[{index}].key", "a key relative to the prefix, e.g. models/gpt-4o")]
            )
        out[change.key] = None if change.delete else change.value_json.encode()
    if not out:
        raise invalid_argument([("changes", "at least one change is required")])
    return out


def usage_groups(
    engine: Engine,
    start: datetime,
    end: datetime,
    independent: Callable[[str], bool] = lambda _context: False,
) -> list[UsageGroup]:
    """The window's usage per (context, user, tier); users merged where `independent`."""
    return [UsageGroup(*sums) for sums in window_usage(engine, start, end, independent, ANY_USER)]


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def context_message(impact: ContextImpact, days: float) -> admin_pb2.ContextImpact:
    return admin_pb2.ContextImpact(
        context=impact.context,
        calls=impact.calls,
        changed_calls=impact.changed_calls,
        changed_share=impact.changed_share,
        moves=[
            admin_pb2.ModelMove(from_model=a, to_model=b, calls=n)
            for (a, b), n in sorted(impact.moves.items(), key=lambda item: (-item[1], item[0]))
        ],
        variant_moves=[
            admin_pb2.VariantMove(from_variant=a, to_variant=b, users=len(users))
            for (a, b), users in sorted(
                impact.variant_moves.items(), key=lambda item: (-len(item[1]), item[0])
            )
        ],
        cost_per_day_before_usd=impact.cost_before_usd / days,
        cost_per_day_after_usd=impact.cost_after_usd / days,
        unreachable_models=impact.unreachable,
        calls_without_user=impact.calls_without_user,
    )


class ImpactPreview:
    def __init__(
        self,
        engine: Engine,
        etcd: EtcdClient,
        prefix: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._etcd = etcd
        self._prefix = prefix
        self._clock = clock

    async def preview(
        self, request: admin_pb2.PreviewConfigChangeRequest
    ) -> admin_pb2.PreviewConfigChangeResponse:
        changes = key_changes(list(request.changes))
        # Checked before building a timedelta: a huge int64 would overflow it.
        if request.window_seconds and not 0 < request.window_seconds <= MAX_WINDOW.total_seconds():
            raise invalid_argument([("window_seconds", "between 1 second and 90 days")])
        window = (
            timedelta(seconds=request.window_seconds) if request.window_seconds else DEFAULT_WINDOW
        )
        try:
            base_revision, stored = await read_prefix(self._etcd, self._prefix)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        current = {k: v.value for k, v in stored.items() if not k.startswith(RUNTIME_KIND + "/")}
        proposed = plan(current, base_revision, changes)
        if not proposed.ok:
            raise invalid_argument([(r.key, r.error) for r in proposed.rejections])
        end = self._clock()
        start = end - window
        before, after = snapshots(current, proposed.changes, base_revision, end)
        try:
            groups = await asyncio.to_thread(
                usage_groups, self._engine, start, end, user_independent(before, after)
            )
            preferences = await asyncio.to_thread(all_preferences, self._engine)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
        impacts = await asyncio.to_thread(replay, groups, before, after, end, preferences)
        days = window / timedelta(days=1)
        ordered = sorted(impacts.values(), key=lambda i: (-i.changed_calls, i.context))
        return admin_pb2.PreviewConfigChangeResponse(
            contexts=[context_message(i, days) for i in ordered],
            calls_replayed=sum(i.calls for i in ordered),
            window_start=_timestamp(start),
            window_end=_timestamp(end),
            base_revision=base_revision,
            diff=proposed.diff,
            caveats=list(CAVEATS),
        )


def snapshots(
    current: Mapping[str, bytes],
    changes: Mapping[str, bytes | None],
    base_revision: int,
    now: datetime,
) -> tuple[Snapshot, Snapshot]:
    builder = SnapshotBuilder()
    before, _ = builder.apply(base_revision, current, now, full_state=True)
    after, _ = builder.apply(base_revision + 1, changes, now)
    return before, after
