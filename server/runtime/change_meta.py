"""Who made a config change, and why: a companion key written in the same etcd
transaction as the change.

Every replica sees a transaction as one watch revision, so whichever replica records the
revision in `config_changes` finds the actor and the note beside the changed keys; a
revision without the companion key was written straight into etcd (etcdctl): actor `etcd`.
The key is overwritten by the next write through modelroute (it is not history itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from .keys import CHANGE_META_KEY

META_KEY: Final = CHANGE_META_KEY
# Every change made through modelroute writes the companion key in its own transaction, so a
# write guarded on it too (beside its directories) sees any such change made meanwhile, even
# one that only deleted keys: a deleted key leaves nothing in its directory to compare.
CHANGE_GUARD: Final = (META_KEY,)
ACTOR_ETCD: Final = "etcd"
ACTOR_OPERATOR: Final = "operator"  # a bare admin token (no `name:`), or admin left open
ACTOR_ROLLOUT_CONTROLLER: Final = "rollout-controller"
MAX_NOTE_CHARS: Final = 2000

# The verified admin token's name for the call being served (set by the auth layer).
CURRENT_ACTOR: ContextVar[str] = ContextVar("modelroute_actor", default=ACTOR_OPERATOR)


@dataclass(frozen=True, slots=True)
class ChangeMeta:
    actor: str
    note: str
    at: datetime


def meta_value(actor: str, note: str = "", at: datetime | None = None) -> bytes:
    stamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
    return json.dumps({"actor": actor, "note": note[:MAX_NOTE_CHARS], "at": stamp}).encode()


def with_change_meta(
    changes: Mapping[str, bytes | None], actor: str, note: str = ""
) -> dict[str, bytes | None]:
    """`changes` plus the companion key: pass the result to `write_changes` (one
    transaction). The rollout controller calls this with ACTOR_ROLLOUT_CONTROLLER."""
    if not changes:
        return dict(changes)
    return {**changes, META_KEY: meta_value(actor, note)}


def parse_meta(raw: bytes | None) -> ChangeMeta | None:
    """The companion value, or None when absent or unreadable (then: an etcd write)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return ChangeMeta(
            actor=str(data["actor"])[:128] or ACTOR_OPERATOR,
            note=str(data.get("note", ""))[:MAX_NOTE_CHARS],
            at=datetime.fromisoformat(str(data["at"])).astimezone(UTC),
        )
    except (ValueError, KeyError, TypeError):
        return None
