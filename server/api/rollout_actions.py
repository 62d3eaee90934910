"""Operator actions on guarded rollouts (the dashboard's rollout forms), under /api/admin/:
pause, resume, stop, go to a step, set the candidate's share.

Creating a rollout is a plain guarded config write (`/config/apply` of `rollouts/<id>`).
Stopping one disables its `rollouts/<id>` value (the candidate's share drops to 0 and the
rollout no longer assigns arms; the key stays, so its record does). Pause, resume, step and
share change the controller's progress (`runtime/rollouts/<id>`), which operators otherwise
never write: the controller then carries on from what the operator set (it acts only on
PENDING and RUNNING rollouts, so a PAUSED one holds its share).

Every action is the same guarded write as `config apply`: it names the revision the form was
loaded at, and a change meanwhile to any config key or to the rollout's progress (the
controller's own writes included) answers 409 "the configuration changed since you loaded
it" with nothing written. The bearer token's name is recorded as the actor, in the config
history's companion key written in the same transaction.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from modelroute.storage.etcd import EtcdClient, EtcdConflictError, read_prefix, write_changes
from pydantic import BaseModel, Field

from ..core.rollout_spec import (
    PROGRESS_DIR,
    RolloutDecisionRecord,
    RolloutProgress,
    parse_progress,
)
from ..runtime.change_meta import with_change_meta
from .config_apply import GUARDED_DIRS, apply_to_etcd
from .config_history import conflict
from .errors import invalid_argument, not_found

Action = Literal["pause", "resume", "stop", "step", "percent"]


class RolloutActionBody(BaseModel):
    action: Action
    expected_revision: int = Field(description="The revision the form was loaded at")
    step: int | None = Field(default=None, description="For `step`: the step's index (0-based)")
    percent: int | None = Field(default=None, description="For `percent`: the candidate's share")
    note: str = ""


def _progress_after(
    action: Action,
    body: RolloutActionBody,
    steps: list[dict[str, Any]],
    progress: RolloutProgress,
    actor: str,
    now: datetime,
) -> RolloutProgress:
    """The progress an action leads to; raises ServiceError when it does not apply."""
    state = progress.state
    current = (
        progress.percent
        if progress.percent is not None
        else int(steps[min(progress.step, len(steps) - 1)].get("percent", 0))
    )
    started = progress.started_at or now
    if action == "pause":
        if state not in ("PENDING", "RUNNING"):
            raise invalid_argument(
                [("action", f"the rollout is {state}; only a running one pauses")]
            )
        after = replace(progress, state="PAUSED", percent=current, started_at=started)
    elif action == "resume":
        if state != "PAUSED":
            raise invalid_argument([("action", f"the rollout is {state}, not PAUSED")])
        after = replace(progress, state="RUNNING", step_started_at=progress.step_started_at or now)
    elif action == "step":
        if body.step is None or not 0 <= body.step < len(steps):
            raise invalid_argument([("step", f"a step index from 0 to {len(steps) - 1}")])
        after = replace(
            progress,
            state="PAUSED" if state == "PAUSED" else "RUNNING",
            step=body.step,
            percent=int(steps[body.step].get("percent", 0)),
            started_at=started,
            step_started_at=now,
        )
    else:  # percent
        if body.percent is None or not 0 <= body.percent <= 100:
            raise invalid_argument([("percent", "a share from 0 to 100")])
        after = replace(
            progress,
            state="PAUSED" if state == "PAUSED" else "RUNNING",
            percent=body.percent,
            started_at=started,
            step_started_at=progress.step_started_at or now,
        )
    detail = f"by {actor}" + (f": {body.note}" if body.note else "")
    record = RolloutDecisionRecord(
        now, f"operator {action}", after.step, after.percent or 0, detail
    )
    return replace(after, decisions=(*after.decisions, record))


async def rollout_action(
    etcd: EtcdClient,
    prefix: str,
    rollout_id: str,
    body: RolloutActionBody,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Apply one operator action to a rollout (one guarded etcd transaction)."""
    if body.expected_revision <= 0:
        raise invalid_argument([("expected_revision", "the revision the form was loaded at")])
    _, stored = await read_prefix(etcd, prefix)
    key = f"rollouts/{rollout_id}"
    if key not in stored:
        raise not_found("ROLLOUT_NOT_FOUND", f"no rollout {rollout_id!r}")
    value: dict[str, Any] = json.loads(stored[key].value)
    if body.action == "stop":
        try:
            plan, revision = await apply_to_etcd(
                etcd,
                prefix,
                {key: json.dumps({**value, "enabled": False}).encode()},
                expected_revision=body.expected_revision,
                actor=actor,
                note=body.note or f"rollout {rollout_id} stopped",
            )
        except EtcdConflictError:
            raise conflict(body.expected_revision) from None
        if not plan.ok:
            raise invalid_argument([(r.key, r.error) for r in plan.rejections])
        return {"rollout_id": rollout_id, "state": "DISABLED", "percent": 0, "revision": revision}
    if value.get("enabled") is False:
        raise invalid_argument([("action", f"rollout {rollout_id} is stopped (disabled)")])
    raw = stored.get(PROGRESS_DIR + rollout_id)
    progress = parse_progress(raw.value) if raw is not None else RolloutProgress()
    target = f"{value.get('context', '')}|{value.get('candidate', '')}"
    if progress.target and progress.target != target:
        progress = RolloutProgress()  # about an earlier context / candidate: starts afresh
    progress = replace(progress, target=target)
    after = _progress_after(body.action, body, list(value.get("steps", [])), progress, actor, now)
    note = body.note or f"rollout {rollout_id}: operator {body.action}"
    changes = with_change_meta({PROGRESS_DIR + rollout_id: after.to_json(actor, note)}, actor, note)
    try:
        revision = await write_changes(
            etcd, prefix, changes, body.expected_revision, (*GUARDED_DIRS, PROGRESS_DIR)
        )
    except EtcdConflictError:
        raise conflict(body.expected_revision) from None
    return {
        "rollout_id": rollout_id,
        "state": after.state,
        "step": after.step,
        "percent": after.percent,
        "revision": revision,
    }
