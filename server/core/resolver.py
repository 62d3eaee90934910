"""Model resolution: a pure function of (snapshot, runtime limits, request, now).

No I/O, no clock, no randomness: everything it depends on is an argument, so it is
exhaustively testable and identical on every replica. The order is DESIGN.md's:
env `MODEL_<CTX>` → operator override → user preference → running experiment →
context default → global default; then the availability walk over the fallback chain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Final, Protocol

import mmh3
from modelroute.v1 import types_pb2

from .rollout_spec import BASELINE_ARM, CANDIDATE_ARM
from .snapshot import (
    ContextSpec,
    ExperimentSpec,
    ModelSpec,
    Snapshot,
    env_variable_for,
)

BUCKETS: Final = 10_000


class Reason(IntEnum):
    ENV_OVERRIDE = types_pb2.REASON_ENV_OVERRIDE
    OPERATOR_OVERRIDE = types_pb2.REASON_OPERATOR_OVERRIDE
    USER_PREFERENCE = types_pb2.REASON_USER_PREFERENCE
    EXPERIMENT = types_pb2.REASON_EXPERIMENT
    CONTEXT_DEFAULT = types_pb2.REASON_CONTEXT_DEFAULT
    GLOBAL_DEFAULT = types_pb2.REASON_GLOBAL_DEFAULT
    ROLLOUT = types_pb2.REASON_ROLLOUT


class Cause(IntEnum):
    DISABLED = types_pb2.FALLBACK_CAUSE_DISABLED
    UNKNOWN_MODEL = types_pb2.FALLBACK_CAUSE_UNKNOWN_MODEL
    COOLDOWN = types_pb2.FALLBACK_CAUSE_COOLDOWN
    PROVIDER_QUOTA = types_pb2.FALLBACK_CAUSE_PROVIDER_QUOTA
    BUDGET = types_pb2.FALLBACK_CAUSE_BUDGET
    EXCLUDED_BY_CALLER = types_pb2.FALLBACK_CAUSE_EXCLUDED_BY_CALLER
    TIER_NOT_ALLOWED = types_pb2.FALLBACK_CAUSE_TIER_NOT_ALLOWED


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a model cannot serve right now, and when that may change (None: not by time)."""

    cause: Cause
    retry_at: datetime | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BudgetBreach:
    """A context's daily budget is spent: `deny` refuses, else the cheapest fallback serves."""

    deny: bool
    retry_at: datetime  # when the budget window resets
    detail: str = ""


class RuntimeLimits(Protocol):
    """Seam for state that changes between config revisions: cooldowns, provider quotas,
    budgets. Implementations answer from memory (no I/O on the resolve path)."""

    def check(
        self, model: ModelSpec, context: ContextSpec | None, now: datetime
    ) -> Unavailable | None: ...

    def budget_breach(self, context: ContextSpec, now: datetime) -> BudgetBreach | None: ...


class NoRuntimeLimits:
    """No cooldowns, quotas or budgets in force."""

    def check(
        self, model: ModelSpec, context: ContextSpec | None, now: datetime
    ) -> Unavailable | None:
        return None

    def budget_breach(self, context: ContextSpec, now: datetime) -> BudgetBreach | None:
        return None


NO_RUNTIME_LIMITS: Final = NoRuntimeLimits()


@dataclass(frozen=True, slots=True)
class ResolveInput:
    context: str
    user_id: str = ""
    tier: str = ""
    exclude_models: frozenset[str] = frozenset()
    request_id: str = ""
    # The user's stored preference for this context (looked up by the caller; None if none).
    preferred_model: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    model_id: str
    provider: str
    fallback_model_ids: tuple[str, ...]
    reason: Reason
    experiment_id: str
    variant_id: str
    config_revision: int
    fallback_from: str  # "" when the preferred model served
    fallback_cause: Cause | None
    warnings: tuple[str, ...]
    cache_ttl_seconds: float


@dataclass(frozen=True, slots=True)
class SkippedModel:
    model_id: str
    unavailable: Unavailable


class NoModelAvailableError(Exception):
    """Every model in the chain is unavailable. `retry_at` is the earliest time one may
    come back (None when nothing will come back by itself, e.g. all disabled)."""

    def __init__(self, context: str, skipped: tuple[SkippedModel, ...], reason: Reason) -> None:
        self.context = context
        self.skipped = skipped
        self.reason = reason
        times = [s.unavailable.retry_at for s in skipped if s.unavailable.retry_at is not None]
        self.retry_at: datetime | None = min(times) if times else None
        summary = ", ".join(f"{s.model_id} ({s.unavailable.cause.name})" for s in skipped)
        super().__init__(
            f"no model available for context {context!r}: {summary or 'no model configured'}"
        )


def bucket_of(experiment_id: str, unit_id: str) -> int:
    """Stable bucket in [0, 10000): murmur3 x86 32-bit, seed 0, of the UTF-8 bytes of
    `experiment_id + "/" + unit_id` (DESIGN.md step 4; available in every language)."""
    return mmh3.hash(f"{experiment_id}/{unit_id}".encode(), 0, signed=False) % BUCKETS


def assign_variant(experiment: ExperimentSpec, unit_id: str) -> int:
    """Index of the variant whose cumulative bucket range contains the unit's bucket."""
    bucket = bucket_of(experiment.experiment_id, unit_id)
    for index, upper in enumerate(experiment.cumulative_buckets):
        if bucket < upper:
            return index
    return len(experiment.variants) - 1  # unreachable when weights sum to 100


def _choose(
    snapshot: Snapshot, request: ResolveInput, now: datetime, warnings: list[str]
) -> tuple[str, Reason, str, str]:
    """Steps 1-6: (model, reason, experiment id, variant id), before availability."""
    context_name = request.context
    if snapshot.env_overrides:
        pinned = snapshot.env_overrides.get(env_variable_for(context_name))
        if pinned:
            return pinned, Reason.ENV_OVERRIDE, "", ""

    override = snapshot.overrides.get(context_name)
    if override is not None and override.active(now):
        return override.model, Reason.OPERATOR_OVERRIDE, "", ""

    context = snapshot.contexts.get(context_name)
    preferred = request.preferred_model
    if preferred and context is not None and context.user_selectable:
        model = snapshot.models.get(preferred)
        if model is None or not model.enabled:
            warnings.append(f"preferred model {preferred!r} is not available; preference skipped")
        elif not model.allows_tier(request.tier):
            warnings.append(
                f"preferred model {preferred!r} is not allowed for tier {request.tier!r}; "
                "preference skipped"
            )
        else:
            return preferred, Reason.USER_PREFERENCE, "", ""

    rollout = snapshot.rollouts_by_context.get(context_name)
    rollout_unit = request.user_id or request.request_id
    if rollout is not None and rollout_unit:
        # Same bucketing as experiments, keyed by the rollout id: a unit below the share
        # stays on the candidate as the share grows (1% → 10% keeps the first 1%). Calls
        # without a user id are bucketed by their request id.
        if bucket_of(rollout.rollout_id, rollout_unit) < rollout.percent * (BUCKETS // 100):
            return rollout.candidate, Reason.ROLLOUT, rollout.rollout_id, CANDIDATE_ARM
        baseline = context.model if context is not None else snapshot.settings.default_model
        return baseline, Reason.ROLLOUT, rollout.rollout_id, BASELINE_ARM
    if rollout is not None:
        warnings.append(
            f"rollout {rollout.rollout_id!r} skipped: no user id or request_id to bucket by"
        )

    for experiment in snapshot.experiments_by_context.get(context_name, ()):
        if not experiment.running(now):
            continue
        unit = request.request_id if experiment.bucket_by_request else request.user_id
        if not unit:
            warnings.append(
                f"experiment {experiment.experiment_id!r} skipped: no "
                f"{'request_id' if experiment.bucket_by_request else 'user id'} to bucket by"
            )
            continue
        variant = experiment.variants[assign_variant(experiment, unit)]
        return variant.model, Reason.EXPERIMENT, experiment.experiment_id, variant.variant_id

    if context is not None:
        return context.model, Reason.CONTEXT_DEFAULT, "", ""
    warnings.append(f"unknown context {context_name!r}: using the global default model")
    return snapshot.settings.default_model, Reason.GLOBAL_DEFAULT, "", ""


def _chain(first: str, context: ContextSpec | None, snapshot: Snapshot) -> tuple[str, ...]:
    fallbacks = context.fallbacks if context is not None else ()
    return _deduplicated_chain(first, fallbacks, snapshot.settings.default_fallbacks)


@functools.lru_cache(maxsize=1024)
def _deduplicated_chain(
    first: str, fallbacks: tuple[str, ...], default_fallbacks: tuple[str, ...]
) -> tuple[str, ...]:
    """The chosen model, the context's fallbacks, the global ones; each once, first
    occurrence wins. Cached: a handful of distinct chains per config."""
    return tuple(dict.fromkeys(((first,) if first else ()) + fallbacks + default_fallbacks))


def _availability(
    model_id: str,
    snapshot: Snapshot,
    context: ContextSpec | None,
    request: ResolveInput,
    runtime: RuntimeLimits,
    now: datetime,
) -> Unavailable | None:
    model = snapshot.models.get(model_id)
    if model is None:
        return Unavailable(Cause.UNKNOWN_MODEL)
    if not model.enabled:
        return Unavailable(Cause.DISABLED)
    if model_id in request.exclude_models:
        return Unavailable(Cause.EXCLUDED_BY_CALLER)
    return runtime.check(model, context, now)


def _price_per_mtok(model: ModelSpec) -> float:
    return model.input_usd_per_mtok + model.output_usd_per_mtok


def resolve(
    snapshot: Snapshot,
    request: ResolveInput,
    now: datetime,
    runtime: RuntimeLimits = NO_RUNTIME_LIMITS,
) -> Decision:
    """Decide the model for one request. Raises NoModelAvailableError."""
    warnings: list[str] = []
    chosen, reason, experiment_id, variant_id = _choose(snapshot, request, now, warnings)
    context = snapshot.contexts.get(request.context)

    available: list[str] = []
    skipped: list[SkippedModel] = []
    breach = (
        runtime.budget_breach(context, now)
        if context is not None and context.budget is not None
        else None
    )
    for model_id in _chain(chosen, context, snapshot):
        unavailable = _availability(model_id, snapshot, context, request, runtime, now)
        if unavailable is None and breach is not None and (breach.deny or model_id == chosen):
            # DENY refuses everything; FALLBACK moves off the chosen model (below: cheapest).
            unavailable = Unavailable(Cause.BUDGET, breach.retry_at, breach.detail)
        if unavailable is None:
            available.append(model_id)
        else:
            skipped.append(SkippedModel(model_id, unavailable))
    if not available:
        raise NoModelAvailableError(request.context, tuple(skipped), reason)
    if breach is not None:
        # Over budget: the cheapest available fallback serves (stable: ties keep chain order).
        available.sort(key=lambda m: _price_per_mtok(snapshot.models[m]))

    served = available[0]
    fallback_cause = None
    if served != chosen:
        first_skip = skipped[0] if skipped and skipped[0].model_id == chosen else None
        fallback_cause = first_skip.unavailable.cause if first_skip else Cause.UNKNOWN_MODEL
        if not chosen:
            warnings.append("no model configured (settings.default_model is empty)")
        elif fallback_cause == Cause.UNKNOWN_MODEL:
            warnings.append(f"model {chosen!r} is not configured; served a fallback")
        # Experiment attribution only holds when the variant's model actually served.
        experiment_id = variant_id = ""

    ttl = float(snapshot.settings.decision_cache_seconds)
    override = snapshot.overrides.get(request.context)
    if override is not None and override.expires is not None and override.active(now):
        ttl = min(ttl, (override.expires - now).total_seconds())
    for skip in skipped:
        if skip.unavailable.retry_at is not None:
            ttl = min(ttl, max(0.0, (skip.unavailable.retry_at - now).total_seconds()))
    if reason == Reason.EXPERIMENT and any(
        e.bucket_by_request for e in snapshot.experiments_by_context.get(request.context, ())
    ):
        ttl = 0.0

    return Decision(
        model_id=served,
        provider=snapshot.models[served].provider,
        fallback_model_ids=tuple(available[1:]),
        reason=reason,
        experiment_id=experiment_id,
        variant_id=variant_id,
        config_revision=snapshot.revision,
        fallback_from=chosen if served != chosen else "",
        fallback_cause=fallback_cause,
        warnings=tuple(warnings),
        cache_ttl_seconds=ttl,
    )
