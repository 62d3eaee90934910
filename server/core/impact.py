"""Impact of a config change on recorded traffic: a pure replay (no I/O, no clock).

Each usage group (context, user, tier, with its call count and tokens) is resolved under
the configuration in force and under the proposed one with the same pure resolver the
servers use, with no runtime limits (cooldowns and quotas are not replayable). A decision
depends on the user only through experiment buckets and the preferred model, so groups
with the same (context, tier, preference, buckets) share one resolution: the replay's cost
grows with the number of distinct situations, not with the number of rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from .resolver import (
    NoModelAvailableError,
    ResolveInput,
    assign_variant,
    resolve,
)
from .snapshot import ExperimentSpec, Snapshot

NO_MODEL: Final = "(none)"
# The user id of a group that merges the users of a context whose decisions do not depend
# on who calls (see `user_independent`); "" still means "calls without a user id".
ANY_USER: Final = "(any user)"


def user_independent(before: Snapshot, after: Snapshot) -> Callable[[str], bool]:
    """Whether a context's decisions are the same for every user under both snapshots: no
    experiment on it and users may not choose its model (so no preference applies). Its
    calls can then be grouped by (context, tier) alone."""

    def independent(context: str) -> bool:
        for snapshot in (before, after):
            spec = snapshot.contexts.get(context)
            if context in snapshot.experiments_by_context or (spec and spec.user_selectable):
                return False
        return True

    return independent


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Recorded calls that share (context, user, tier)."""

    context: str
    user_id: str  # "" when the calls carried no user id
    tier: str
    calls: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str  # NO_MODEL when nothing is available
    variant: str  # "experiment/variant", or "" outside experiments
    reachable: tuple[str, ...]  # the served model and its fallbacks


@dataclass
class ContextImpact:
    context: str
    calls: int = 0
    changed_calls: int = 0
    calls_without_user: int = 0
    cost_before_usd: float = 0.0  # over the whole window
    cost_after_usd: float = 0.0
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)
    variant_moves: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    reachable_before: set[str] = field(default_factory=set)
    reachable_after: set[str] = field(default_factory=set)

    @property
    def changed_share(self) -> float:
        return self.changed_calls / self.calls if self.calls else 0.0

    @property
    def unreachable(self) -> list[str]:
        return sorted(self.reachable_before - self.reachable_after)


def outcome_of(snapshot: Snapshot, request: ResolveInput, now: datetime) -> Outcome:
    try:
        decision = resolve(snapshot, request, now)
    except NoModelAvailableError:
        return Outcome(NO_MODEL, "", ())
    variant = f"{decision.experiment_id}/{decision.variant_id}" if decision.experiment_id else ""
    return Outcome(decision.model_id, variant, (decision.model_id, *decision.fallback_model_ids))


def cost_usd(snapshot: Snapshot, model: str, input_tokens: int, output_tokens: int) -> float:
    spec = snapshot.models.get(model)
    return spec.cost_usd(input_tokens, output_tokens) if spec is not None else 0.0


class _Resolver:
    """Memoised resolution under one snapshot."""

    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        self.snapshot = snapshot
        self._now = now
        self._cache: dict[tuple[object, ...], Outcome] = {}
        self._bucketed: dict[str, tuple[ExperimentSpec, ...]] = {}

    def _user_experiments(self, context: str) -> tuple[ExperimentSpec, ...]:
        found = self._bucketed.get(context)
        if found is None:
            found = tuple(
                e
                for e in self.snapshot.experiments_by_context.get(context, ())
                if e.running(self._now) and not e.bucket_by_request
            )
            self._bucketed[context] = found
        return found

    def outcome(self, group: UsageGroup, preferred: str | None) -> Outcome:
        experiments = self._user_experiments(group.context)
        buckets = tuple(
            assign_variant(e, group.user_id) if group.user_id else -1 for e in experiments
        )
        key = (group.context, group.tier, preferred, buckets, bool(group.user_id))
        found = self._cache.get(key)
        if found is None:
            request = ResolveInput(
                context=group.context,
                user_id=group.user_id,
                tier=group.tier,
                preferred_model=preferred,
            )
            found = outcome_of(self.snapshot, request, self._now)
            self._cache[key] = found
        return found


def replay(
    groups: Iterable[UsageGroup],
    before: Snapshot,
    after: Snapshot,
    now: datetime,
    preferences: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, ContextImpact]:
    """Per context: what the groups' calls would get before and after. `preferences` is
    user id → context ("" = every context) → preferred model."""
    resolvers = (_Resolver(before, now), _Resolver(after, now))
    impacts: dict[str, ContextImpact] = {}
    prefs = preferences or {}
    for group in groups:
        impact = impacts.get(group.context)
        if impact is None:
            impact = impacts[group.context] = ContextImpact(group.context)
        user_prefs = prefs.get(group.user_id) if group.user_id not in ("", ANY_USER) else None
        preferred = (user_prefs.get(group.context) or user_prefs.get("")) if user_prefs else None
        old = resolvers[0].outcome(group, preferred)
        new = resolvers[1].outcome(group, preferred)
        impact.calls += group.calls
        if not group.user_id:
            impact.calls_without_user += group.calls
        impact.cost_before_usd += cost_usd(
            before, old.model, group.input_tokens, group.output_tokens
        )
        impact.cost_after_usd += cost_usd(after, new.model, group.input_tokens, group.output_tokens)
        impact.reachable_before.update(old.reachable)
        impact.reachable_after.update(new.reachable)
        if old.model != new.model:
            impact.changed_calls += group.calls
            impact.moves[(old.model, new.model)] += group.calls
        if old.variant != new.variant and group.user_id not in ("", ANY_USER):
            impact.variant_moves[(old.variant, new.variant)].add(group.user_id)
    return impacts
