"""Runtime state shared by replicas through etcd: cooldowns here, counters in quotas.py.

A QUOTA_EXCEEDED / RATE_LIMITED report on any replica writes
`runtime/cooldowns/models/<id>` (or `.../providers/<name>`) bound to an etcd lease, so
every replica sees it through the same watch as the config, a restarted replica reads it
back, and etcd deletes it by itself when the lease ends. The value carries the exact end
time; the lease only guarantees cleanup.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from modelroute.storage.runtime_store import RuntimeStore
from modelroute.storage.updates import ConfigUpdate

from ..core.resolver import BudgetBreach, Cause, Unavailable
from ..core.snapshot import ContextSpec, ModelSpec
from .keys import COOLDOWN_DIR, cooldown_key
from .quotas import QuotaTracker

log = logging.getLogger("modelroute.runtime")
DEFAULT_COOLDOWN: Final = timedelta(seconds=60)


class RuntimeState:
    """Implements the resolver's RuntimeLimits from watched `runtime/` keys (memory only on
    the resolve path; the reload task is the only writer)."""

    def __init__(self, quotas: QuotaTracker | None = None) -> None:
        # "models/<id>" or "providers/<name>" → cooldown end.
        self.cooldowns: dict[str, datetime] = {}
        self.quotas = quotas

    def apply_update(self, update: ConfigUpdate) -> None:
        if self.quotas is not None:
            self.quotas.apply_update(update)
        if update.full_state:
            self.cooldowns = {}
        for key, raw in update.changes.items():
            if not key.startswith(COOLDOWN_DIR):
                continue
            subject = key[len(COOLDOWN_DIR) :]
            if raw is None:
                self.cooldowns.pop(subject, None)
                continue
            try:
                until = datetime.fromisoformat(json.loads(raw)["until"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring malformed cooldown %s: %s", key, exc)
                continue
            self.cooldowns[subject] = until

    def check(
        self, model: ModelSpec, context: ContextSpec | None, now: datetime
    ) -> Unavailable | None:
        if not self.cooldowns:  # the common case: nothing cooling down anywhere
            return self.quotas.provider_unavailable(model, now) if self.quotas else None
        ends = [
            (until, subject)
            for subject in (f"models/{model.model_id}", f"providers/{model.provider}")
            if (until := self.cooldowns.get(subject)) is not None and now < until
        ]
        if ends:
            until, subject = max(ends)
            return Unavailable(
                Cause.COOLDOWN, until, f"{subject} cooling down until {until:%H:%M:%S}Z"
            )
        return self.quotas.provider_unavailable(model, now) if self.quotas is not None else None

    def budget_breach(self, context: ContextSpec, now: datetime) -> BudgetBreach | None:
        return self.quotas.budget_breach(context, now) if self.quotas is not None else None

    def active(self, now: datetime) -> Mapping[str, datetime]:
        return {subject: until for subject, until in self.cooldowns.items() if now < until}


async def start_cooldown(
    store: RuntimeStore,
    subject: str,
    duration: timedelta,
    reason: str,
    now: datetime | None = None,
) -> datetime:
    """Put `subject` ("models/<id>" or "providers/<name>") in cooldown on every replica."""
    now = now or datetime.now(UTC)
    until = now + duration
    # Lease TTL rounds up: the key must outlive `until`; resolution uses `until` itself.
    value = json.dumps({"until": until.isoformat(), "reason": reason}).encode()
    ttl = max(2, math.ceil(duration.total_seconds()) + 1)
    await store.put_leased(cooldown_key(subject), value, ttl)
    log.info("cooldown %s until %s (%s)", subject, until.isoformat(), reason)
    return until


async def clear_cooldown(store: RuntimeStore, subject: str) -> bool:
    """End `subject`'s cooldown on every replica; False if it had none."""
    return await store.delete(cooldown_key(subject))
