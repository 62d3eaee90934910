"""Provider limits and context budgets, counted across every replica.

Each replica counts what it sees (admissions at ResolveModel; tokens and cost from accepted
usage reports) for the current windows (UTC minute and UTC day) and publishes its counts to
`runtime/usage/<replica id>` about once a second (quota_publisher.py). Every replica reads
the others' keys through the config watch and adds them to its own counts. Nothing is read
from etcd on the resolve path: the totals are in memory.

How far N replicas can overshoot a request limit L: not at all while etcd is reachable.
Admission works on *reservations*: a replica admits only up to a reservation it has
already published (in the same key as its counts); when that is used, it publishes a new
one first (callers wait for that write, a millisecond or two on loopback). A new
reservation is the replica's use plus a share of what the others' published reservations
(which bound what they may have admitted) leave: at most 1/N of it, at most what the
replica's recent demand needs for two publication intervals (an idle replica holds almost
nothing; a busy one rarely waits), at least 1 while anything is left. The write is an etcd
transaction guarded on the other replicas' keys being unchanged since the view the share
was computed from (else: re-read, recompute, retry), so the reservations in etcd always
add up to at most L, and admitted <= L. tests/test_quotas.py checks it with two replica
processes under load, tests/test_runtime_store.py with three trackers on one store.
The price: a replica whose reservation is used while the others' reservations cover
the rest falls back (cause PROVIDER_QUOTA) before the total reaches L; what the others
hold unused is at most about two publication intervals of their demand. A slow etcd
does not loosen the bound: a resolve waits for the publication it asked for (only a
publication that fails or times out means "unreachable"), and one that finds no share
free in time (concurrent callers took them, or its deadline comes) falls back likewise.
A replica that stops publishing for 5 s (crash) is counted with its use only, not its
reservation. Token limits are checked, not reserved: a call admitted under the limit
reports its tokens afterwards, so tokens can overshoot by the calls in flight when the
limit is reached. Budgets likewise (cost is known only from reports).

While etcd is unreachable a replica cannot publish: it keeps admitting against its last
view of the others plus its own counts (availability first), so the overshoot during an
outage is bounded by what the other replicas admit in that time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from modelroute.storage.updates import ConfigUpdate

from ..core.resolver import BudgetBreach, Cause, Unavailable
from ..core.snapshot import ContextSpec, ModelSpec, Snapshot
from .keys import USAGE_DIR
from .quota_counts import (
    DEFAULT_WARN_RATIO,
    LIVENESS,
    MINUTE_METRICS,
    PROVIDER_LIMITS,
    PUBLISH_INTERVAL,
    REQUEST_LIMITS,
    SPEND_PER_DAY,
    TOKENS_PER_DAY,
    TOKENS_PER_MINUTE,
    Admission,
    Counts,
    LimitState,
    QuotaAlert,
    day_window,
    limits_set,
    minute_window,
    provider_limit,
    window_end,
)

log = logging.getLogger("modelroute.quotas")


class QuotaTracker:
    """In-memory totals (own + peers'), admission decisions and threshold alerts. The
    resolve path only reads and increments memory; `QuotaPublisher` does the etcd I/O."""

    def __init__(
        self,
        replica_id: str,
        snapshot: Callable[[], Snapshot | None],
        *,
        on_alert: Callable[[QuotaAlert], None] = lambda alert: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replica_id = replica_id
        self._snapshot = snapshot
        self._on_alert = on_alert
        # Wall clock for windows and heartbeats; monotonic clock for demand rates.
        self.clock = clock
        self._monotonic = monotonic
        now = clock()
        self.mine = Counts(minute_window(now), day_window(now))
        # (start of the minute in epoch seconds, (minute, day) windows): `_roll`'s shortcut.
        self._current_minute = (self.mine.minute * 60, (self.mine.minute, self.mine.day))
        # What the others have seen, with the reservations in force (published, so the
        # others already leave room for them).
        self.published = self.mine.copy()
        self.peers: dict[str, Counts] = {}
        # etcd mod revision of each peer's counts as seen here, and the newest revision
        # this view is complete up to: a publication is written only if no peer key
        # changed after it (see QuotaPublisher), so reservations never rest on stale views.
        self._peer_revisions: dict[str, int] = {}
        self.seen_revision = 0
        self._raised: set[str] = set()
        self.sync_requested = asyncio.Event()
        # False while publications fail (etcd unreachable): admissions then count locally
        # at once instead of waiting for a publication that cannot happen.
        self.publishing_ok = True
        # Callers waiting for a publication computed *after* they asked.
        self._sync_waiters: asyncio.Future[bool] | None = None
        # Demand (admission attempts, granted or not) drives the size of new reservations.
        self._demand = 0
        self._demand_mark = (0, monotonic())

    # --- totals -------------------------------------------------------------------------

    def _roll(self, now: datetime) -> tuple[int, int]:
        stamp = now.timestamp()
        start, windows = self._current_minute
        if start <= stamp < start + 60 and self.mine.minute == windows[0]:
            return windows  # most calls: the same minute as the last one (no date math)
        minute, day = minute_window(now), day_window(now)
        if minute != self.mine.minute or day != self.mine.day:
            self.mine.roll(minute, day)
            self.published.roll(minute, day)
            self._raised = {key for key in self._raised if key.endswith(f"@{day}")}
        self._current_minute = (minute * 60, (minute, day))
        return minute, day

    def _peers_total(self, metric: str, subject: str, minute: int, day: int) -> float:
        if not self.peers:
            return 0.0
        return sum(peer.get(metric, subject, minute, day) for peer in self.peers.values())

    def total(self, metric: str, subject: str, now: datetime) -> float:
        minute, day = self._roll(now)
        return self.mine.get(metric, subject, minute, day) + self._peers_total(
            metric, subject, minute, day
        )

    def live_replicas(self, now: datetime) -> int:
        horizon = now.timestamp() - LIVENESS
        return 1 + sum(1 for peer in self.peers.values() if peer.heartbeat >= horizon)

    # --- RuntimeLimits (read only) ------------------------------------------------------

    def provider_unavailable(self, model: ModelSpec, now: datetime) -> Unavailable | None:
        snapshot = self._snapshot()
        spec = snapshot.providers.get(model.provider) if snapshot is not None else None
        if spec is None:
            return None
        for metric, limit in limits_set(spec, PROVIDER_LIMITS):
            if metric in REQUEST_LIMITS and self._reserved_by_others(
                metric, model.provider, limit, now
            ):
                return Unavailable(
                    Cause.PROVIDER_QUOTA,
                    window_end(metric, now),
                    f"{model.provider} {metric} limit {limit}: the rest is reserved by other "
                    "replicas",
                )
            if self.total(metric, model.provider, now) >= limit:
                # The crossing may have come from a peer's counts: alert here too (deduped).
                self._check_thresholds(
                    metric, model.provider, limit, spec.warn_ratio, now, *self._roll(now)
                )
                return Unavailable(
                    Cause.PROVIDER_QUOTA,
                    window_end(metric, now),
                    f"{model.provider} {metric} limit {limit} reached",
                )
        return None

    def _reserved_by_others(self, metric: str, provider: str, limit: int, now: datetime) -> bool:
        """This replica used its reservation and the others' reservations cover what is
        left: it may not admit more in this window (admitting anyway would break the
        bound); its traffic falls back even though the total is not yet reached."""
        minute, day = self._roll(now)
        mine = self.mine.get(metric, provider, minute, day)
        if mine < self.published.reservation(metric, provider, minute, day):
            return False  # room in its own reservation (the common case: one lookup)
        return limit - mine - self._peers_reserved(metric, provider, minute, day, now) < 1

    def budget_breach(self, context: ContextSpec, now: datetime) -> BudgetBreach | None:
        budget = context.budget
        if budget is None or budget.usd_per_day <= 0:
            return None
        spent = self.total(SPEND_PER_DAY, context.name, now)
        if spent < budget.usd_per_day:
            return None
        self._check_thresholds(
            SPEND_PER_DAY,
            context.name,
            budget.usd_per_day,
            budget.warn_ratio,
            now,
            *self._roll(now),
        )
        return BudgetBreach(
            budget.deny_when_exceeded,
            window_end(SPEND_PER_DAY, now),
            f"{context.name} budget ${budget.usd_per_day:.2f}/day spent (${spent:.2f})",
        )

    # --- counting ------------------------------------------------------------------------

    def near_request_limit(self, provider: str, now: datetime) -> bool:
        """At or past the warn ratio of a request limit. Decisions cached by clients are
        not admissions, so near a limit the server asks clients not to cache."""
        snapshot = self._snapshot()
        spec = snapshot.providers.get(provider) if snapshot is not None else None
        if spec is None:
            return False
        ratio = spec.warn_ratio or DEFAULT_WARN_RATIO
        return any(
            self.total(metric, provider, now) >= limit * ratio
            for metric, limit in limits_set(spec, REQUEST_LIMITS)
        )

    def admit(self, provider: str, now: datetime, *, force: bool = False) -> Admission:
        """Count one admission for `provider` if its request limits allow it. `force`
        skips the share check (used when publishing is impossible: etcd down)."""
        snapshot = self._snapshot()
        spec = snapshot.providers.get(provider) if snapshot is not None else None
        if spec is None:
            return Admission.ADMITTED
        limited = limits_set(spec, REQUEST_LIMITS)
        if not limited:
            return Admission.ADMITTED
        minute, day = self._roll(now)
        for metric, limit in limited:
            mine = self.mine.get(metric, provider, minute, day)
            if mine + self._peers_total(metric, provider, minute, day) >= limit:
                return Admission.EXCEEDED
            if not force and mine >= self.published.reservation(metric, provider, minute, day):
                self._demand += 1
                return Admission.SYNC_NEEDED  # publish a new reservation first
        self._demand += 1
        for metric, limit in limited:
            self.mine.add(metric, provider, 1)
            self._check_thresholds(metric, provider, limit, spec.warn_ratio, now, minute, day)
        return Admission.ADMITTED

    def record_usage(
        self, provider: str, context: str, tokens: int, cost_usd: float, now: datetime
    ) -> None:
        """Count an accepted usage report's tokens (provider limits) and cost (budget)."""
        snapshot = self._snapshot()
        if snapshot is None:
            return
        minute, day = self._roll(now)
        spec = snapshot.providers.get(provider)
        if spec is not None and tokens > 0:
            for metric in (TOKENS_PER_MINUTE, TOKENS_PER_DAY):
                limit = provider_limit(spec, metric)
                if limit:
                    self.mine.add(metric, provider, tokens)
                    self._check_thresholds(
                        metric, provider, limit, spec.warn_ratio, now, minute, day
                    )
        context_spec = snapshot.contexts.get(context)
        budget = context_spec.budget if context_spec is not None else None
        if budget is not None and budget.usd_per_day > 0 and cost_usd > 0:
            self.mine.add(SPEND_PER_DAY, context, cost_usd)
            self._check_thresholds(
                SPEND_PER_DAY, context, budget.usd_per_day, budget.warn_ratio, now, minute, day
            )

    def _check_thresholds(
        self,
        metric: str,
        subject: str,
        limit: float,
        warn_ratio: float,
        now: datetime,
        minute: int,
        day: int,
    ) -> None:
        used = self.mine.get(metric, subject, minute, day) + self._peers_total(
            metric, subject, minute, day
        )
        ratio = warn_ratio or DEFAULT_WARN_RATIO
        if used < limit * ratio:
            return
        window = f"m{minute}" if metric in MINUTE_METRICS else f"d{day}"
        budget = metric == SPEND_PER_DAY
        if used >= limit:
            kind, severity = ("budget_exceeded" if budget else "quota_exhausted"), "critical"
        else:
            kind, severity = ("budget_warning" if budget else "quota_warning"), "warning"
        dedup_key = f"{kind}|{subject}|{metric}|{window}"
        if dedup_key + f"@{day}" in self._raised:
            return
        self._raised.add(dedup_key + f"@{day}")
        percent = math.floor(100 * used / limit)  # 99.99% must not read as 100%
        if budget:
            message = (
                f"context {subject}: ${used:.2f} of ${limit:.2f} daily budget spent "
                f"({percent}%); resets {window_end(metric, now):%Y-%m-%d %H:%M} UTC"
            )
        else:
            message = (
                f"provider {subject}: {used:.0f} of {limit:.0f} {metric.replace('_', ' ')} used "
                f"({percent}%); resets {window_end(metric, now):%H:%M:%S} UTC"
            )
        self._on_alert(QuotaAlert(kind, severity, subject, message, dedup_key))

    # --- state for operators -----------------------------------------------------------

    def provider_states(self, now: datetime) -> list[LimitState]:
        snapshot = self._snapshot()
        return [
            LimitState(name, metric, limit, self.total(metric, name, now), window_end(metric, now))
            for name, spec in sorted(snapshot.providers.items() if snapshot else ())
            for metric, limit in limits_set(spec, PROVIDER_LIMITS)
        ]

    def budget_states(self, now: datetime) -> list[LimitState]:
        snapshot = self._snapshot()
        return [
            LimitState(
                name,
                SPEND_PER_DAY,
                context.budget.usd_per_day,
                self.total(SPEND_PER_DAY, name, now),
                window_end(SPEND_PER_DAY, now),
            )
            for name, context in sorted(snapshot.contexts.items() if snapshot else ())
            if context.budget is not None and context.budget.usd_per_day > 0
        ]

    # --- peers (watch) and publication ----------------------------------------------------

    def apply_update(self, update: ConfigUpdate) -> None:
        if update.full_state:
            self.peers, self._peer_revisions = {}, {}
        peers_changed = False
        for key, raw in update.changes.items():
            if key.startswith(USAGE_DIR):
                self._set_peer(key[len(USAGE_DIR) :], raw, update.revision)
                peers_changed = True
        self.seen_revision = max(self.seen_revision, update.revision)
        if peers_changed:
            self.check_all_thresholds(self.clock())

    def check_all_thresholds(self, now: datetime) -> None:
        """Totals grew through the others' counts: raise what they crossed (deduplicated;
        the alert must not wait for this replica's next admission)."""
        snapshot = self._snapshot()
        if snapshot is None:
            return
        minute, day = self._roll(now)
        for name, spec in snapshot.providers.items():
            for metric, limit in limits_set(spec, PROVIDER_LIMITS):
                self._check_thresholds(metric, name, limit, spec.warn_ratio, now, minute, day)
        for name, context in snapshot.contexts.items():
            budget = context.budget
            if budget is not None and budget.usd_per_day > 0:
                self._check_thresholds(
                    SPEND_PER_DAY, name, budget.usd_per_day, budget.warn_ratio, now, minute, day
                )

    def refresh_peers(self, stored: dict[str, tuple[bytes, int]], revision: int) -> None:
        """A direct read of `runtime/usage/` (replica → (value, mod revision)) at `revision`;
        newer than what the watch has delivered so far."""
        for replica in set(self.peers) - set(stored):
            if self._peer_revisions.get(replica, 0) <= revision:
                self.peers.pop(replica, None)
        for replica, (raw, mod_revision) in stored.items():
            self._set_peer(replica, raw, mod_revision)
        self.seen_revision = max(self.seen_revision, revision)

    def _set_peer(self, replica: str, raw: bytes | None, revision: int) -> None:
        if replica == self.replica_id or self._peer_revisions.get(replica, 0) > revision:
            return  # this replica itself, or an older event than a direct read gave
        self._peer_revisions[replica] = revision
        if raw is None:
            self.peers.pop(replica, None)
            return
        try:
            self.peers[replica] = Counts.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring malformed usage counts of %s: %s", replica, exc)

    def _peers_reserved(
        self, metric: str, subject: str, minute: int, day: int, now: datetime
    ) -> float:
        horizon = now.timestamp() - LIVENESS
        return sum(
            # A replica that stopped publishing holds only what it used, not its reservation.
            peer.get_reserved(metric, subject, minute, day)
            if peer.heartbeat >= horizon
            else peer.get(metric, subject, minute, day)
            for peer in self.peers.values()
        )

    def publication(self, now: datetime) -> Counts:
        """This replica's counts plus fresh reservations for its request limits: each
        takes at most 1/N of what the others' reservations and its own use leave, enough
        for about two publication intervals of the demand seen since the last one (so an
        idle replica holds almost nothing), and at least 1 while anything is left."""
        minute, day = self._roll(now)
        counts = self.mine.copy()
        snapshot = self._snapshot()
        if snapshot is None:
            return counts
        live = self.live_replicas(now)
        demand, since = self._demand_mark
        elapsed = max(self._monotonic() - since, 0.001)
        wanted = max(1, math.ceil(2 * PUBLISH_INTERVAL * (self._demand - demand) / elapsed))
        self._demand_mark = (self._demand, self._monotonic())
        for provider, spec in snapshot.providers.items():
            for metric in REQUEST_LIMITS:
                limit = provider_limit(spec, metric)
                if not limit:
                    continue
                mine = self.mine.get(metric, provider, minute, day)
                remaining = limit - mine - self._peers_reserved(metric, provider, minute, day, now)
                if remaining >= 1:
                    share = min(max(1, int(remaining) // live), wanted)
                    counts.reserved.setdefault(metric, {})[provider] = mine + share
        return counts

    def mark_published(self, counts: Counts) -> None:
        self.published = counts

    async def sync(self, timeout: float) -> bool:
        """Ask the publisher for a publication computed after this call and wait for it
        (False: it failed, or took longer than `timeout`). Only the publisher turns
        `publishing_ok` off (an etcd step that failed or did not answer in time): a slow
        publication is still one, and counting locally meanwhile could pass the limit."""
        if self._sync_waiters is None:
            self._sync_waiters = asyncio.get_running_loop().create_future()
        waiters = self._sync_waiters
        self.sync_requested.set()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiters)
        except TimeoutError:
            return False

    def take_sync_waiters(self) -> asyncio.Future[bool] | None:
        """Called by the publisher just before it computes a publication: the callers
        that asked so far are answered by it; later ones wait for the next."""
        waiters, self._sync_waiters = self._sync_waiters, None
        return waiters
