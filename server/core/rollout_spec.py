"""Guarded progressive rollouts as the snapshot holds them: the operator's `rollouts/<id>`
value joined with the controller's progress in `runtime/rollouts/<id>`.

Design (DESIGN.md "Rollouts"): the operator's key says what to roll out and how; the
controller's progress (current step, share, state, decisions) lives in a separate runtime
key so that operators never race the controller on one value, and deleting or rewriting
the rollout key never loses the controller's record. Both arrive through the same watch, so
every replica serves the share the controller last wrote. Pure: no I/O, no clock.

Progress value (JSON, written only by the controller, see `usage/rollout_controller.py`):
`{"state": "RUNNING"|"PAUSED"|"ROLLED_BACK"|"COMPLETED", "step": 0, "percent": 1,
  "started_at": RFC 3339, "step_started_at": RFC 3339, "target": "<context>|<candidate>",
  "decisions": [{"time", "action", "step", "percent", "detail"}, ...],
  "actor": "rollout-controller", "note": "..."}`.
`target` names what the progress is about: when an operator points the rollout at another
context or candidate, the old progress no longer applies and the rollout starts again from
its first step; edits of steps, guardrails or `enabled` keep it. To retry a rolled-back
rollout, `modelroute rollout restart ID` deletes the progress.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from modelroute.config.v1 import config_pb2

PROGRESS_DIR: Final = "runtime/rollouts/"
CANDIDATE_ARM: Final = "candidate"
BASELINE_ARM: Final = "baseline"
# States in which the candidate keeps (or may grow) its share.
SERVING_STATES: Final = frozenset({"PENDING", "RUNNING", "PAUSED", "COMPLETED"})
MAX_DECISIONS_KEPT: Final = 100


@dataclass(frozen=True, slots=True)
class StepSpec:
    percent: int
    min_seconds: int
    min_calls: int


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    metric: str  # short name: ERROR_RATE, P95_LATENCY_MS, COST_PER_CALL, QUALITY, ...
    bound_kind: str  # max_increase | max_relative_increase | max_decrease
    bound: float

    @property
    def label(self) -> str:
        return f"{self.bound_kind}={self.bound:g}"


@dataclass(frozen=True, slots=True)
class RolloutDecisionRecord:
    time: datetime
    action: str
    step: int
    percent: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "action": self.action,
            "step": self.step,
            "percent": self.percent,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class RolloutProgress:
    """The controller's record for one rollout (PENDING until its first check)."""

    state: str = "PENDING"
    step: int = 0
    percent: int | None = None  # None: the first step's percent
    started_at: datetime | None = None
    step_started_at: datetime | None = None
    target: str = ""
    decisions: tuple[RolloutDecisionRecord, ...] = ()

    def to_json(self, actor: str, note: str) -> bytes:
        document = {
            "state": self.state,
            "step": self.step,
            "percent": self.percent,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "step_started_at": self.step_started_at.isoformat() if self.step_started_at else None,
            "target": self.target,
            "decisions": [d.to_json() for d in self.decisions[-MAX_DECISIONS_KEPT:]],
            # Who wrote it and why: read by the config history (actor `rollout-controller`).
            "actor": actor,
            "note": note,
        }
        return json.dumps(document, sort_keys=True).encode()


def parse_progress(raw: bytes) -> RolloutProgress:
    """Raises ValueError (or KeyError/TypeError) on a malformed value."""
    data = json.loads(raw)

    def when(name: str) -> datetime | None:
        value = data.get(name)
        return datetime.fromisoformat(value) if value else None

    return RolloutProgress(
        state=str(data["state"]),
        step=int(data["step"]),
        percent=None if data.get("percent") is None else int(data["percent"]),
        started_at=when("started_at"),
        step_started_at=when("step_started_at"),
        target=str(data.get("target", "")),
        decisions=tuple(
            RolloutDecisionRecord(
                datetime.fromisoformat(d["time"]),
                str(d["action"]),
                int(d["step"]),
                int(d["percent"]),
                str(d.get("detail", "")),
            )
            for d in data.get("decisions", ())
        ),
    )


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    rollout_id: str
    context: str
    candidate: str
    steps: tuple[StepSpec, ...]
    guardrails: tuple[GuardrailSpec, ...]
    pause_on_breach: bool
    enabled: bool
    progress: RolloutProgress = field(default_factory=RolloutProgress)

    @property
    def current_progress(self) -> RolloutProgress:
        """The progress, unless it was about another context or candidate."""
        if self.progress.target and self.progress.target != self.target:
            return RolloutProgress()
        return self.progress

    @property
    def target(self) -> str:
        return f"{self.context}|{self.candidate}"

    @property
    def state(self) -> str:
        return self.current_progress.state if self.enabled else "DISABLED"

    @property
    def percent(self) -> int:
        """The candidate's share now (0 when rolled back or disabled)."""
        progress = self.current_progress
        if not self.enabled or progress.state not in SERVING_STATES:
            return 0
        if progress.percent is not None:
            return progress.percent
        return self.steps[min(progress.step, len(self.steps) - 1)].percent

    @property
    def applies(self) -> bool:
        """Whether resolution assigns arms (the rollout still shapes the context)."""
        return self.enabled and self.current_progress.state in SERVING_STATES


def rollout_spec(
    rollout_id: str, m: config_pb2.Rollout, progress: RolloutProgress | None
) -> RolloutSpec:
    return RolloutSpec(
        rollout_id=rollout_id,
        context=m.context,
        candidate=m.candidate,
        steps=tuple(StepSpec(s.percent, s.min_seconds, s.min_calls) for s in m.steps),
        guardrails=tuple(_guardrail_spec(g) for g in m.guardrails),
        pause_on_breach=m.on_breach == config_pb2.BREACH_ACTION_PAUSE,
        enabled=m.enabled,
        progress=progress or RolloutProgress(),
    )


def _guardrail_spec(g: config_pb2.Guardrail) -> GuardrailSpec:
    metric = config_pb2.GuardrailMetric.Name(g.metric).removeprefix("GUARDRAIL_METRIC_")
    for kind in ("max_increase", "max_relative_increase", "max_decrease"):
        if g.HasField(kind):
            return GuardrailSpec(metric, kind, float(getattr(g, kind)))
    raise ValueError("guardrail without a bound (validation lets none through)")


def exclusive_context_conflict(
    key: str, message: object, others: Mapping[str, object], now: datetime
) -> str | None:
    """A context with an enabled rollout takes no other rollout and no unfinished
    experiment (DESIGN.md; experiments among themselves may share a context): the error
    for `key` (written later) if another key already holds its context."""
    context = _claimed_context(message, now)
    if context is None:
        return None
    is_rollout = isinstance(message, config_pb2.Rollout)
    for other_key, other in sorted(others.items()):
        if not is_rollout and not isinstance(other, config_pb2.Rollout):
            continue
        if other_key != key and _claimed_context(other, now) == context:
            kind = "rollout" if other_key.startswith("rollouts/") else "experiment"
            return (
                f"context {context!r} already has an enabled {kind}: {other_key}; "
                "a context takes one rollout or experiment at a time (disable or delete it first)"
            )
    return None


def _claimed_context(message: object, now: datetime) -> str | None:
    if isinstance(message, config_pb2.Rollout) and message.enabled:
        return message.context
    if isinstance(message, config_pb2.Experiment) and message.enabled:
        ended = message.HasField("end") and message.end.ToDatetime(tzinfo=UTC) <= now
        return None if ended else message.context
    return None
