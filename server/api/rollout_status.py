"""`GetRolloutStatus`: every rollout's step, share, arms and guardrails, answered by any
replica (progress from the watched snapshot, figures from the same query and the same
guardrail judgement the controller uses, so status and controller never disagree)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.errors import StoreUnavailableError

from ..core.rollout_spec import BASELINE_ARM, CANDIDATE_ARM, RolloutSpec
from ..core.snapshot import Snapshot
from ..usage.rollout_controller import judge, window_of
from ..usage.rollout_metrics import ArmStats, RolloutMetricsReader
from .errors import not_found, store_unavailable


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _finite(value: float) -> float:
    # Proto doubles carry infinities, but JSON clients choke on them: ±1e308 reads as
    # "unbounded" and stays a number.
    return value if math.isfinite(value) else math.copysign(1e308, value)


async def rollout_status(
    snapshot: Snapshot | None,
    reader: RolloutMetricsReader | None,
    rollout_id: str,
    now: datetime | None = None,
) -> admin_pb2.GetRolloutStatusResponse:
    now = now or datetime.now(UTC)
    rollouts = dict(snapshot.rollouts) if snapshot is not None else {}
    if rollout_id:
        if rollout_id not in rollouts:
            known = ", ".join(sorted(rollouts)) or "none"
            raise not_found(
                "ROLLOUT_NOT_FOUND",
                f"no rollout {rollout_id!r} in the configuration; known: {known}",
            )
        rollouts = {rollout_id: rollouts[rollout_id]}
    arms: dict[str, dict[str, ArmStats]] = {}
    started = {rid: s for rid, s in rollouts.items() if s.current_progress.started_at}
    if reader is not None and started:
        windows = {rid: window_of(spec, now) for rid, spec in started.items()}
        try:
            arms = await asyncio.to_thread(reader.read, windows)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from None
    response = admin_pb2.GetRolloutStatusResponse()
    if snapshot is None:
        return response
    for rid in sorted(rollouts):
        response.rollouts.append(_status(rollouts[rid], arms.get(rid, {}), snapshot))
    return response


def _status(
    spec: RolloutSpec, arms: dict[str, ArmStats], snapshot: Snapshot
) -> admin_pb2.RolloutStatus:
    progress = spec.current_progress
    context = snapshot.contexts.get(spec.context)
    candidate = arms.get(CANDIDATE_ARM, ArmStats())
    baseline = arms.get(BASELINE_ARM, ArmStats())
    status = admin_pb2.RolloutStatus(
        rollout_id=spec.rollout_id,
        context=spec.context,
        candidate=spec.candidate,
        baseline_model=context.model if context else snapshot.settings.default_model,
        state=spec.state,
        step=progress.step,
        steps=len(spec.steps),
        percent=spec.percent,
        candidate_calls=candidate.calls,
        baseline_calls=baseline.calls,
        step_candidate_calls=candidate.calls_since_step,
        enabled=spec.enabled,
    )
    if progress.started_at:
        status.started_at.CopyFrom(_stamp(progress.started_at))
    if progress.step_started_at:
        status.step_started_at.CopyFrom(_stamp(progress.step_started_at))
    for verdict in judge(spec, arms):
        status.guardrails.append(
            admin_pb2.GuardrailStatus(
                metric=verdict.guardrail.metric,
                bound=verdict.guardrail.label,
                candidate_value=verdict.candidate_value,
                baseline_value=verdict.baseline_value,
                estimate=verdict.result.estimate,
                interval_low=_finite(verdict.result.low),
                interval_high=_finite(verdict.result.high),
                breached=verdict.breached,
                candidate_samples=verdict.candidate_samples,
                baseline_samples=verdict.baseline_samples,
                description=verdict.description,
            )
        )
    for record in progress.decisions:
        status.decisions.append(
            admin_pb2.RolloutDecision(
                time=_stamp(record.time),
                action=record.action,
                step=record.step,
                percent=record.percent,
                detail=record.detail,
            )
        )
    return status
