"""The typed, validated form of each config value (models, contexts, experiments, ...).

Built from the parsed `modelroute.config.v1` messages; a `Snapshot` holds them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from google.protobuf.message import Message
from modelroute.config.v1 import config_pb2

DEFAULT_WARN_RATIO: Final = 0.8
DEFAULT_DECISION_CACHE_SECONDS: Final = 5
DEFAULT_ROLLOUT_CHECK_SECONDS: Final = 60
DEFAULT_HISTORY_DAYS: Final = 90


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model_id: str
    provider: str
    tiers: frozenset[str]  # empty: every tier
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    enabled: bool

    def allows_tier(self, tier: str) -> bool:
        return not self.tiers or tier in self.tiers

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    usd_per_day: float
    warn_ratio: float
    deny_when_exceeded: bool


@dataclass(frozen=True, slots=True)
class ContextSpec:
    name: str
    model: str
    fallbacks: tuple[str, ...]
    user_selectable: bool
    budget: BudgetSpec | None


@dataclass(frozen=True, slots=True)
class OverrideSpec:
    context: str
    model: str
    note: str
    expires: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


@dataclass(frozen=True, slots=True)
class VariantSpec:
    variant_id: str
    model: str
    weight: int


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    experiment_id: str
    context: str
    variants: tuple[VariantSpec, ...]
    # Cumulative bucket upper bounds (of 10,000), precomputed so assignment is a scan.
    cumulative_buckets: tuple[int, ...]
    start: datetime | None
    end: datetime | None
    bucket_by_request: bool
    enabled: bool

    def running(self, now: datetime) -> bool:
        return (
            self.enabled
            and (self.start is None or self.start <= now)
            and (self.end is None or now < self.end)
        )


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    provider: str
    requests_per_minute: int
    tokens_per_minute: int
    requests_per_day: int
    tokens_per_day: int
    warn_ratio: float
    cooldown_seconds: int


@dataclass(frozen=True, slots=True)
class SettingsSpec:
    default_model: str = ""
    default_fallbacks: tuple[str, ...] = ()
    alert_webhook_url: str = ""
    decision_cache_seconds: int = DEFAULT_DECISION_CACHE_SECONDS
    rollout_check_seconds: int = DEFAULT_ROLLOUT_CHECK_SECONDS
    history_days: int = DEFAULT_HISTORY_DAYS


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """An application allowed to call ModelRouterService (`clients/<name>`)."""

    name: str
    key_sha256: str  # lowercase hex
    # None: every context. Otherwise one compiled regex of all the globs (one match call
    # on the hot path, whatever the number of patterns).
    allowed: re.Pattern[str] | None
    enabled: bool

    def allows(self, context: str) -> bool:
        return self.allowed is None or self.allowed.fullmatch(context) is not None


def client_spec(name: str, m: config_pb2.Client) -> ClientSpec:
    allowed = None
    if m.allowed_contexts:
        # fnmatch.translate anchors with \Z; fullmatch makes the anchoring explicit anyway.
        allowed = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in m.allowed_contexts))
    return ClientSpec(
        name=name,
        key_sha256=m.key_sha256.lower(),
        allowed=allowed,
        enabled=m.enabled if m.HasField("enabled") else True,
    )


def ts(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value


def cumulative(weights: Iterable[int]) -> tuple[int, ...]:
    total, bounds = 0, []
    for weight in weights:
        total += weight * 100  # percent → buckets of 10,000
        bounds.append(total)
    return tuple(bounds)


def model_spec(model_id: str, m: config_pb2.Model) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        provider=m.provider,
        tiers=frozenset(m.tiers),
        input_usd_per_mtok=m.input_usd_per_mtok,
        output_usd_per_mtok=m.output_usd_per_mtok,
        enabled=m.enabled if m.HasField("enabled") else True,
    )


def context_spec(name: str, m: config_pb2.Context) -> ContextSpec:
    budget = None
    if m.HasField("budget") and m.budget.usd_per_day > 0:
        budget = BudgetSpec(
            usd_per_day=m.budget.usd_per_day,
            warn_ratio=m.budget.warn_ratio or DEFAULT_WARN_RATIO,
            deny_when_exceeded=m.budget.on_exceeded == config_pb2.BUDGET_ACTION_DENY,
        )
    return ContextSpec(name, m.model, tuple(m.fallbacks), m.user_selectable, budget)


def experiment_spec(experiment_id: str, m: config_pb2.Experiment) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_id=experiment_id,
        context=m.context,
        variants=tuple(VariantSpec(v.id, v.model, v.weight) for v in m.variants),
        cumulative_buckets=cumulative(v.weight for v in m.variants),
        start=ts(m, "start"),
        end=ts(m, "end"),
        bucket_by_request=m.bucket_by == config_pb2.BUCKET_BY_REQUEST,
        enabled=m.enabled,
    )


def provider_spec(name: str, m: config_pb2.Provider) -> ProviderSpec:
    return ProviderSpec(
        provider=name,
        requests_per_minute=m.requests_per_minute,
        tokens_per_minute=m.tokens_per_minute,
        requests_per_day=m.requests_per_day,
        tokens_per_day=m.tokens_per_day,
        warn_ratio=m.warn_ratio or DEFAULT_WARN_RATIO,
        cooldown_seconds=m.cooldown_seconds,
    )
