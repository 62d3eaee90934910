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

from modelroute.server.core.resolver import Decision, ResolveInput, RuntimeLimits, resolve
from modelroute.server.core.snapshot import Snapshot
from modelroute.server.runtime.quota_counts import Admission
from modelroute.server.runtime.quotas import QuotaTracker
from modelroute.storage.usage_store import UsageRecord

MAX_ADMISSION_ROUNDS: Final = 8
SYNC_TIMEOUT_SECONDS: Final = 0.25
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
) -> tuple[Decision, datetime]:
    """Count the admission against the served provider's request limits.

    When this replica's share of what is left is used, publish (shared by concurrent
    callers) and ask again; past the limit, resolve again (the limit now skips the
    provider). Returns the decision served and the time it was made.
    """
    for _ in range(MAX_ADMISSION_ROUNDS):
        verdict = quotas.admit(decision.provider, now)
        if verdict is Admission.ADMITTED:
            break
        if verdict is Admission.SYNC_NEEDED and (
            not quotas.publishing_ok or not await quotas.sync(SYNC_TIMEOUT_SECONDS)
        ):
            # etcd unreachable: count locally against the last view of the others.
            quotas.admit(decision.provider, now, force=True)
            break
        now = clock()
        decision = resolve(snapshot, resolve_input, now, runtime)
    else:
        quotas.admit(decision.provider, now, force=True)
    if decision.cache_ttl_seconds and quotas.near_request_limit(decision.provider, now):
        # Cached decisions are not admissions: near a limit every call must come here.
        decision = dataclasses.replace(decision, cache_ttl_seconds=0.0)
    return decision, now


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
