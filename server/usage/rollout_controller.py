"""The rollout controller: one leader across replicas advances, pauses or rolls back every
guarded rollout (`rollouts/<id>`) on an interval (`settings.rollout_check_seconds`).

Each check reads the arms' figures since the rollout started (one query for all
rollouts), judges every guardrail with the always-valid test (`usage/guardrails.py`), and
decides (`decide`, pure):
- no progress yet → RUNNING at the first step ("started");
- a guardrail breached → ROLLED_BACK at 0% (on_breach ROLLBACK) or PAUSED at the current
  share (PAUSE), with a `rollout_rolled_back` / `rollout_paused` alert;
- the step's minimums met (`min_seconds` since it began, `min_calls` candidate calls in
  it) → the next step ("advanced"), or COMPLETED after the last one, with a
  `rollout_completed` alert suggesting `modelroute rollout promote ID`.
The new progress goes to `runtime/rollouts/<id>` through `write_progress`, the one guarded
write (fenced on the leader key and on the progress the decision was based on), recorded
with actor `rollout-controller`. Every replica serves the new share from the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from modelroute.storage.leader import DEFAULT_TTL
from modelroute.storage.rollout_store import EtcdRolloutStore
from modelroute.storage.updates import ConfigUpdate

from ..core.rollout_spec import (
    BASELINE_ARM,
    CANDIDATE_ARM,
    PROGRESS_DIR,
    RolloutDecisionRecord,
    RolloutProgress,
    RolloutSpec,
    parse_progress,
)
from ..core.snapshot import Snapshot
from .alerts import AlertSink
from .guardrails import GuardrailVerdict, evaluate
from .rollout_metrics import (
    ArmStats,
    RolloutArms,
    RolloutMetricsReader,
    RolloutWindow,
)
from .sequential import DEFAULT_ALPHA

log = logging.getLogger("modelroute.rollouts")
ACTOR: Final = "rollout-controller"
LEADER_KEY: Final = "runtime/rollout-controller/leader"
# The config history's "who and why" key (its format: {"actor", "note", "at"}).
CHANGE_META_KEY: Final = "runtime/change-meta"
ACTIVE_STATES: Final = frozenset({"PENDING", "RUNNING"})


@dataclass(frozen=True, slots=True)
class RolloutAlert:
    kind: str
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    progress: RolloutProgress | None  # None: nothing to write
    alert: RolloutAlert | None
    verdicts: tuple[GuardrailVerdict, ...]


def judge(spec: RolloutSpec, arms: Mapping[str, ArmStats]) -> tuple[GuardrailVerdict, ...]:
    candidate = arms.get(CANDIDATE_ARM, ArmStats())
    baseline = arms.get(BASELINE_ARM, ArmStats())
    # Bonferroni over the guardrails: at most 5% chance of stopping a candidate that stays
    # within every bound, over the whole rollout (each test is valid at every check).
    alpha = DEFAULT_ALPHA / max(1, len(spec.guardrails))
    return tuple(evaluate(g, candidate, baseline, alpha) for g in spec.guardrails)


def decide(spec: RolloutSpec, arms: Mapping[str, ArmStats], now: datetime) -> Decision:
    """What the controller does with one rollout now (pure)."""
    progress = spec.current_progress
    if not spec.enabled or progress.state not in ACTIVE_STATES:
        return Decision(None, None, ())
    if progress.state == "PENDING":
        first = spec.steps[0].percent
        started = RolloutProgress(
            state="RUNNING",
            step=0,
            percent=first,
            started_at=now,
            step_started_at=now,
            target=spec.target,
        )
        record = RolloutDecisionRecord(now, "started", 0, first, f"candidate at {first}%")
        return Decision(_with(started, record), None, ())

    verdicts = judge(spec, arms)
    breached = [v for v in verdicts if v.breached]
    if breached:
        why = "; ".join(v.summary() for v in breached)
        if spec.pause_on_breach:
            state, action, percent = "PAUSED", "paused", spec.percent
            message = (
                f"rollout {spec.rollout_id} of {spec.candidate} on {spec.context} paused at "
                f"{percent}%: {why}"
            )
            alert = RolloutAlert("rollout_paused", "warning", message)
        else:
            state, action, percent = "ROLLED_BACK", "rolled_back", 0
            message = (
                f"rollout {spec.rollout_id} of {spec.candidate} on {spec.context} rolled back "
                f"to 0%: {why}"
            )
            alert = RolloutAlert("rollout_rolled_back", "critical", message)
        after = replace(progress, state=state, percent=percent)
        record = RolloutDecisionRecord(now, action, progress.step, percent, why)
        return Decision(_with(after, record), alert, verdicts)

    step = spec.steps[min(progress.step, len(spec.steps) - 1)]
    began = progress.step_started_at or now
    step_calls = arms.get(CANDIDATE_ARM, ArmStats()).calls_since_step
    if now - began < timedelta(seconds=step.min_seconds) or step_calls < step.min_calls:
        return Decision(None, None, verdicts)
    if progress.step + 1 >= len(spec.steps):
        after = replace(progress, state="COMPLETED")
        detail = f"all steps passed; candidate at {spec.percent}%"
        message = (
            f"rollout {spec.rollout_id} of {spec.candidate} on {spec.context} completed at "
            f"{spec.percent}% with every guardrail within bounds; make it the context's "
            f"model with `modelroute rollout promote {spec.rollout_id}`"
        )
        record = RolloutDecisionRecord(now, "completed", progress.step, spec.percent, detail)
        alert = RolloutAlert("rollout_completed", "info", message)
        return Decision(_with(after, record), alert, verdicts)
    next_step = progress.step + 1
    percent = spec.steps[next_step].percent
    after = replace(progress, step=next_step, percent=percent, step_started_at=now)
    detail = (
        f"step {progress.step} held {int((now - began).total_seconds())} s and "
        f"{step_calls} candidate calls with every guardrail within bounds"
    )
    record = RolloutDecisionRecord(now, "advanced", next_step, percent, detail)
    return Decision(_with(after, record), None, verdicts)


def _with(progress: RolloutProgress, record: RolloutDecisionRecord) -> RolloutProgress:
    return replace(progress, decisions=(*progress.decisions, record))


def window_of(spec: RolloutSpec, now: datetime) -> RolloutWindow:
    progress = spec.current_progress
    since = progress.started_at or now
    return RolloutWindow(spec.rollout_id, since, progress.step_started_at or since)


async def write_progress(
    store: EtcdRolloutStore,
    rollout_id: str,
    progress: RolloutProgress,
    *,
    expected_mod_revision: int,
    leader: str | None = None,
    note: str = "",
) -> bool:
    """The controller's one guarded etcd write: succeeds only if the progress key is still
    at `expected_mod_revision` (0: absent) and, with `leader`, that replica still holds the
    leader key. Recorded with actor `rollout-controller`: in the value, and in the config
    history's companion key written in the same transaction (as every write through
    modelroute does, issue 12 section 1)."""
    meta = json.dumps({"actor": ACTOR, "note": note, "at": datetime.now(UTC).isoformat()})
    return await store.put_guarded(
        PROGRESS_DIR + rollout_id,
        progress.to_json(ACTOR, note),
        expected_mod_revision=expected_mod_revision,
        fence=(LEADER_KEY, leader) if leader is not None else None,
        also={CHANGE_META_KEY: meta.encode()},
    )


class RolloutController:
    def __init__(
        self,
        store: EtcdRolloutStore,
        current: Callable[[], Snapshot | None],
        reader: RolloutMetricsReader,
        alerts: AlertSink | None,
        replica_id: str,
        *,
        leader_ttl: int = DEFAULT_TTL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self._current = current
        self.reader = reader
        self.alerts = alerts
        self.election = store.election(LEADER_KEY, replica_id, leader_ttl)
        self._clock = clock
        self.checks = 0
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await self.election.run(self._lead)

    async def _lead(self) -> None:
        while True:
            snapshot = self._current()
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed check must not end leadership
                log.exception("rollout check failed; retrying at the next interval")
            interval = snapshot.settings.rollout_check_seconds if snapshot else 1
            # Wait for the interval, but check at once when an operator adds, edits or
            # restarts a rollout (no minute-long wait for a new rollout to start).
            # (asyncio.timeout: 3.11's wait_for can swallow the cancellation that stops us.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, float(interval))):
                    await self._wake.wait()
            self._wake.clear()

    def notice(self, update: ConfigUpdate) -> None:
        """Called for every watched etcd update (before it is applied, same task)."""
        if any(key.startswith(("rollouts/", PROGRESS_DIR)) for key in update.changes):
            self._wake.set()

    async def check_once(self) -> list[tuple[str, Decision]]:
        """Check every active rollout once (the leader's loop calls this)."""
        snapshot = self._current()
        if snapshot is None:
            return []
        now = self._clock()
        specs: dict[str, tuple[RolloutSpec, int]] = {}
        for spec in snapshot.rollouts.values():
            if not spec.enabled:
                continue
            # The decision is based on what etcd holds now (the watch may lag our own
            # last write), and the write is guarded on exactly that.
            raw, mod_revision = await self.store.get(PROGRESS_DIR + spec.rollout_id)
            progress = parse_progress(raw) if raw is not None else RolloutProgress()
            fresh = replace(spec, progress=progress)
            if fresh.current_progress.state in ACTIVE_STATES:
                specs[spec.rollout_id] = (fresh, mod_revision)
        windows = {rid: window_of(spec, now) for rid, (spec, _) in specs.items()}
        arms: RolloutArms = await asyncio.to_thread(self.reader.read, windows) if windows else {}
        decisions = []
        for rid, (spec, mod_revision) in specs.items():
            decision = decide(spec, arms.get(rid, {}), now)
            decisions.append((rid, decision))
            if decision.progress is None:
                continue
            last = decision.progress.decisions[-1]
            written = await write_progress(
                self.store,
                rid,
                decision.progress,
                expected_mod_revision=mod_revision,
                leader=self.replica_id,
                note=f"{last.action}: {last.detail}",
            )
            if not written:
                log.info("rollout %s changed underneath (or leadership moved); skipped", rid)
                continue
            log.info("rollout %s %s: %s%% (%s)", rid, last.action, last.percent, last.detail)
            if decision.alert is not None and self.alerts is not None:
                started = decision.progress.started_at
                self.alerts.raise_alert(
                    decision.alert.kind,
                    decision.alert.severity,
                    f"rollouts/{rid}",
                    decision.alert.message,
                    f"{decision.alert.kind}|{rid}|{started.isoformat() if started else ''}",
                )
        self.checks += 1
        return decisions
