"""The runtime side of a decision: quota admission, usage counting, cooldown starts.

ModelRouterService calls these around the pure resolver; they hold the rules for how a
decision meets the shared runtime state (quotas, cooldowns), so the gRPC handlers stay
about requests and answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

from modelroute.storage.usage_store import UsageRecord

from ..core.resolver import (
    BudgetBreach,
    Cause,
    Decision,
    ResolveInput,
    RuntimeLimits,
    Unavailable,
    resolve,
)
from ..core.snapshot import ContextSpec, ModelSpec, Snapshot
from .quota_counts import Admission
from .quota_publisher import PUBLISH_TIMEOUT
from .quotas import QuotaTracker

MAX_ADMISSION_ROUNDS: Final = 8
# How long a resolve waits for the publication of a new reservation: a caller that asked
# during a publication waits for the next one, so two of them (each etcd step answers
# within PUBLISH_TIMEOUT, or local counting turns on), plus the publisher's retry pause.
# Giving up sooner would count against a stale view while etcd still answers (a busy box
# once took over the old 0.25 s and admitted 601 of 600); a caller that gives up while
# etcd answers falls back (below) rather than count.
SYNC_TIMEOUT_SECONDS: Final = 2 * PUBLISH_TIMEOUT + 1.0
# Left of the caller's deadline for answering after a wait for a share that came too late.
ANSWER_MARGIN_SECONDS: Final = 0.05
COOLDOWN_OUTCOMES: Final = frozenset({"RATE_LIMITED", "QUOTA_EXCEEDED"})
DEFAULT_COOLDOWN: Final = timedelta(seconds=60)


async def admit(
    quotas: QuotaTracker,
    snapshot: Snapshot,
    resolve_input: ResolveInput,
    decision: Decision,
    now: datetime,
    runtime: RuntimeLimits,
    clock: Callable[[], datetime],
    time_left: Callable[[], float | None] = lambda: None,
) -> tuple[Decision, datetime]:
    """Count the admission against the served provider's request limits.

    When this replica's share of what is left is used, publish (shared by concurrent
    callers) and ask again; past the limit, resolve again (the limit now skips the
    provider). A wait for a share ends before the caller's deadline (`time_left`: seconds,
    None without one); then the call falls back. Returns the decision served and the time
    it was made.
    """
    admitted = False
    for attempt in range(1, MAX_ADMISSION_ROUNDS + 1):
        verdict = quotas.admit(decision.provider, now)
        if verdict is Admission.SYNC_NEEDED:
            synced = quotas.publishing_ok and await quotas.sync(_wait_limit(time_left()))
            if not synced:
                break  # etcd unreachable, or it granted nothing in time (below)
        admitted = verdict is Admission.ADMITTED
        if admitted or attempt == MAX_ADMISSION_ROUNDS:
            break  # a decision not admitted after the last round is handled below
        now = clock()
        decision = resolve(snapshot, resolve_input, now, runtime)
    if not admitted and not quotas.publishing_ok:
        # etcd unreachable: count locally against the last view of the others.
        quotas.admit(decision.provider, now, force=True)
    elif not admitted:
        # etcd answers, but the shares it granted went to concurrent callers each time
        # (or the limit was reached on the last round): this call falls back rather than
        # count past what this replica reserved.
        starved = _WithoutProvider(
            runtime,
            decision.provider,
            Unavailable(
                Cause.PROVIDER_QUOTA,
                None,
                f"{decision.provider}: no share of its request limit came free for this call",
            ),
        )
        return await admit(
            quotas,
            snapshot,
            resolve_input,
            resolve(snapshot, resolve_input, now, starved),
            now,
            starved,
            clock,
            time_left,
        )
    if decision.cache_ttl_seconds and quotas.near_request_limit(decision.provider, now):
        # Cached decisions are not admissions: near a limit every call must come here.
        decision = dataclasses.replace(decision, cache_ttl_seconds=0.0)
    return decision, now


def _wait_limit(time_left: float | None) -> float:
    if time_left is None:
        return SYNC_TIMEOUT_SECONDS
    return max(0.0, min(SYNC_TIMEOUT_SECONDS, time_left - ANSWER_MARGIN_SECONDS))


@dataclasses.dataclass(frozen=True)
class _WithoutProvider:
    """`runtime`, with every model of `provider` unavailable (for one call)."""

    runtime: RuntimeLimits
    provider: str
    unavailable: Unavailable

    def check(
        self, model: ModelSpec, context: ContextSpec | None, now: datetime
    ) -> Unavailable | None:
        if model.provider == self.provider:
            return self.unavailable
        return self.runtime.check(model, context, now)

    def budget_breach(self, context: ContextSpec, now: datetime) -> BudgetBreach | None:
        return self.runtime.budget_breach(context, now)


def count_usage(quotas: QuotaTracker, stored: Sequence[UsageRecord], now: datetime) -> None:
    """Count newly stored reports' tokens and cost against limits and budgets."""
    for record in stored:
        quotas.record_usage(
            record.provider,
            record.context,
            record.input_tokens + record.output_tokens,
            record.estimated_cost,
            now,
        )


def cooldown_for(
    record: UsageRecord, provider_wide: bool, snapshot: Snapshot
) -> tuple[str, timedelta] | None:
    """The cooldown a newly stored report asks for: (subject, duration), or None.

    A provider that said quota exceeded / rate limited moves traffic off the model (or
    the whole provider) for retry_after, else the provider's cooldown, else a minute.
    """
    if record.outcome not in COOLDOWN_OUTCOMES:
        return None
    provider = snapshot.providers.get(record.provider)
    if record.retry_after_ms:
        duration = timedelta(milliseconds=record.retry_after_ms)
    elif provider is not None and provider.cooldown_seconds:
        duration = timedelta(seconds=provider.cooldown_seconds)
    else:
        duration = DEFAULT_COOLDOWN
    subject = f"providers/{record.provider}" if provider_wide else f"models/{record.model_id}"
    return subject, duration
