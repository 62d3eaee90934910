"""The immutable, fully validated configuration a replica serves, and how it is built.

Flow (after flagd / go-control-plane): raw etcd values → per-value parse and validation →
reference checks against the whole candidate → one immutable `Snapshot` → one reference
swap. A value that fails keeps the last valid value for its key in force; the failure is
recorded as a `Rejection` for status, logs, metrics and spans.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

from google.protobuf.message import Message
from modelroute.config.v1 import config_pb2
from modelroute.server.core.config_values import (
    RUNTIME_KIND,
    ConfigKey,
    ConfigValueError,
    parse_key,
    parse_value,
)
from modelroute.server.core.rollout_spec import (
    PROGRESS_DIR,
    RolloutProgress,
    RolloutSpec,
    exclusive_context_conflict,
    parse_progress,
    rollout_spec,
)

log = logging.getLogger("modelroute.config")
DEFAULT_WARN_RATIO: Final = 0.8
DEFAULT_DECISION_CACHE_SECONDS: Final = 5
DEFAULT_ROLLOUT_CHECK_SECONDS: Final = 60
DEFAULT_HISTORY_DAYS: Final = 90
_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


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


def _client_spec(name: str, m: config_pb2.Client) -> ClientSpec:
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


@dataclass(frozen=True, slots=True)
class Rejection:
    """A value that failed; `previous_in_force` says whether an older valid value serves."""

    key: str
    error: str
    revision: int
    previous_in_force: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything resolution needs, consistent as of one etcd revision. Never mutated."""

    revision: int
    models: Mapping[str, ModelSpec]
    contexts: Mapping[str, ContextSpec]
    overrides: Mapping[str, OverrideSpec]
    experiments: Mapping[str, ExperimentSpec]
    experiments_by_context: Mapping[str, tuple[ExperimentSpec, ...]]
    providers: Mapping[str, ProviderSpec]
    settings: SettingsSpec
    # `MODEL_<CTX>` variable name → model id, read once from the server's environment.
    env_overrides: Mapping[str, str]
    rejections: Mapping[str, Rejection]
    applied_at: datetime
    # `clients/<name>` by name, and the same specs by key SHA-256 (the O(1) lookup that
    # authenticates each application call). Empty: application RPCs need no API key.
    clients: Mapping[str, ClientSpec]
    clients_by_key: Mapping[str, ClientSpec]
    # `rollouts/<id>` joined with the controller's progress; by context only those that
    # still assign arms (enabled, not rolled back). At most one per context.
    rollouts: Mapping[str, RolloutSpec]
    rollouts_by_context: Mapping[str, RolloutSpec]


def env_variable_for(context: str) -> str:
    """`rag.answer` → `MODEL_RAG_ANSWER` (DESIGN.md, resolution step 1)."""
    return "MODEL_" + _NON_ENV_CHARS.sub("_", context.upper())


_NON_ENV_CHARS: Final = re.compile(r"[^A-Z0-9]")


def env_overrides_from(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    env = os.environ if environ is None else environ
    return MappingProxyType(
        {name: value.strip() for name, value in env.items() if name.startswith("MODEL_") and value}
    )


def _ts(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value


def _cumulative(weights: Iterable[int]) -> tuple[int, ...]:
    total, bounds = 0, []
    for weight in weights:
        total += weight * 100  # percent → buckets of 10,000
        bounds.append(total)
    return tuple(bounds)


def _model_spec(model_id: str, m: config_pb2.Model) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        provider=m.provider,
        tiers=frozenset(m.tiers),
        input_usd_per_mtok=m.input_usd_per_mtok,
        output_usd_per_mtok=m.output_usd_per_mtok,
        enabled=m.enabled if m.HasField("enabled") else True,
    )


def _context_spec(name: str, m: config_pb2.Context) -> ContextSpec:
    budget = None
    if m.HasField("budget") and m.budget.usd_per_day > 0:
        budget = BudgetSpec(
            usd_per_day=m.budget.usd_per_day,
            warn_ratio=m.budget.warn_ratio or DEFAULT_WARN_RATIO,
            deny_when_exceeded=m.budget.on_exceeded == config_pb2.BUDGET_ACTION_DENY,
        )
    return ContextSpec(name, m.model, tuple(m.fallbacks), m.user_selectable, budget)


def _experiment_spec(experiment_id: str, m: config_pb2.Experiment) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_id=experiment_id,
        context=m.context,
        variants=tuple(VariantSpec(v.id, v.model, v.weight) for v in m.variants),
        cumulative_buckets=_cumulative(v.weight for v in m.variants),
        start=_ts(m, "start"),
        end=_ts(m, "end"),
        bucket_by_request=m.bucket_by == config_pb2.BUCKET_BY_REQUEST,
        enabled=m.enabled,
    )


def _provider_spec(name: str, m: config_pb2.Provider) -> ProviderSpec:
    return ProviderSpec(
        provider=name,
        requests_per_minute=m.requests_per_minute,
        tokens_per_minute=m.tokens_per_minute,
        requests_per_day=m.requests_per_day,
        tokens_per_day=m.tokens_per_day,
        warn_ratio=m.warn_ratio or DEFAULT_WARN_RATIO,
        cooldown_seconds=m.cooldown_seconds,
    )


def _referenced_models(key: ConfigKey, m: Message) -> list[tuple[str, str]]:
    """(field, model id) pairs a value refers to; each must name a configured model."""
    if isinstance(m, config_pb2.Context):
        return [("model", m.model)] + [("fallbacks", f) for f in m.fallbacks]
    if isinstance(m, config_pb2.Override):
        return [("model", m.model)]
    if isinstance(m, config_pb2.Experiment):
        return [(f"variants[{v.id}].model", v.model) for v in m.variants]
    if isinstance(m, config_pb2.Rollout):
        return [("candidate", m.candidate)]
    if isinstance(m, config_pb2.Settings):
        refs = [("default_fallbacks", f) for f in m.default_fallbacks]
        return ([("default_model", m.default_model)] if m.default_model else []) + refs
    return []


@dataclass
class SnapshotBuilder:
    """Holds the last valid value of every key and turns etcd changes into snapshots.

    Single writer: only the config reload task calls `apply`. Pure: no I/O, no clock
    (the caller passes `now`), so it is exhaustively testable.
    """

    env_overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    _valid: dict[str, tuple[ConfigKey, Message]] = field(default_factory=dict)
    _raw: dict[str, bytes] = field(default_factory=dict)
    _rejections: dict[str, Rejection] = field(default_factory=dict)
    # The rollout controller's progress (`runtime/rollouts/<id>`), by rollout id.
    _progress: dict[str, RolloutProgress] = field(default_factory=dict)

    def apply(
        self,
        revision: int,
        changes: Mapping[str, bytes | None],
        now: datetime,
        *,
        full_state: bool = False,
    ) -> tuple[Snapshot, list[Rejection]]:
        """Apply the changes of one etcd revision (None = deleted) and build a snapshot.

        With `full_state`, `changes` is the complete prefix: keys not in it were deleted
        (used after a (re)connect or a compaction, when events may have been missed).
        Returns the snapshot and the rejections new in this call.
        """
        changes = dict(changes)
        if full_state:
            for gone in self._raw.keys() - changes.keys():
                changes[gone] = None
            # Unchanged values need no re-validation; keep their results as they are.
            changes = {k: v for k, v in changes.items() if v is None or self._raw.get(k) != v}

        candidate = dict(self._valid)
        parsed: dict[str, tuple[ConfigKey, Message]] = {}
        new_rejections: list[Rejection] = []
        cleared: set[str] = set()

        def reject(key: str, error: str) -> None:
            rejection = Rejection(key, error, revision, key in candidate)
            self._rejections[key] = rejection
            new_rejections.append(rejection)

        if full_state:
            self._progress = {}
        for key, raw in changes.items():
            if key.startswith(PROGRESS_DIR):
                self._apply_progress(key[len(PROGRESS_DIR) :], raw)
                continue
            if key.startswith(RUNTIME_KIND + "/"):
                continue
            if raw is None:
                self._raw.pop(key, None)
                candidate.pop(key, None)
                cleared.add(key)
                continue
            self._raw[key] = raw
            try:
                config_key = parse_key(key)
                parsed[key] = (config_key, parse_value(config_key, raw))
            except ConfigValueError as exc:
                reject(key, str(exc))
        candidate.update(parsed)

        # References are checked against the whole candidate, so a model and a context
        # using it may arrive in the same revision in any order. A deleted model is
        # allowed (explicit operator intent); resolution then skips it as UNKNOWN_MODEL.
        models = {ck.id for ck, _ in candidate.values() if ck.kind == "models"}
        for key, (config_key, message) in parsed.items():
            missing = [
                (f, m) for f, m in _referenced_models(config_key, message) if m not in models
            ]
            if missing:
                candidate.pop(key)
                if key in self._valid:
                    candidate[key] = self._valid[key]
                names = ", ".join(f"{f}={m!r}" for f, m in missing)
                reject(key, f"refers to unknown model(s): {names}; add models/<id> first")
            else:
                cleared.add(key)

        contexts = {ck.id for ck, _ in candidate.values() if ck.kind == "contexts"}
        for key, (config_key, message) in sorted(parsed.items()):
            if key not in candidate or config_key.kind not in ("rollouts", "experiments"):
                continue
            error = None
            if isinstance(message, config_pb2.Rollout) and message.context not in contexts:
                error = f"refers to unknown context {message.context!r}; add contexts/<id> first"
            else:
                # The value written later loses: older keys (not in this revision) first,
                # then this revision's in key order.
                holders = {
                    k: m
                    for k, (ck, m) in candidate.items()
                    if ck.kind in ("rollouts", "experiments") and (k not in parsed or k < key)
                }
                error = exclusive_context_conflict(key, message, holders, now)
            if error is not None:
                candidate.pop(key)
                if key in self._valid:
                    candidate[key] = self._valid[key]
                cleared.discard(key)
                reject(key, error)

        # Two clients with one key would make the caller's identity ambiguous: the value
        # written later is rejected (a client's own earlier value, if any, stays in force).
        owners = {
            message.key_sha256.lower(): k
            for k, (ck, message) in candidate.items()
            if ck.kind == "clients" and k not in parsed and isinstance(message, config_pb2.Client)
        }
        for key, (config_key, message) in sorted(parsed.items()):
            if config_key.kind != "clients" or key not in candidate:
                continue
            assert isinstance(message, config_pb2.Client)
            digest = message.key_sha256.lower()
            owner = owners.setdefault(digest, key)
            if owner != key:
                candidate.pop(key)
                if key in self._valid:
                    candidate[key] = self._valid[key]
                cleared.discard(key)
                reject(key, f"key_sha256 is already used by {owner}; each client needs its own key")

        for key in cleared:
            self._rejections.pop(key, None)
        self._valid = candidate
        return self._build(revision, now), new_rejections

    def _apply_progress(self, rollout_id: str, raw: bytes | None) -> None:
        if raw is None:
            self._progress.pop(rollout_id, None)
            return
        try:
            self._progress[rollout_id] = parse_progress(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # Written by servers only; a bad one must not stop the config from applying.
            log.warning("ignoring malformed rollout progress for %s: %s", rollout_id, exc)

    def _build(self, revision: int, now: datetime) -> Snapshot:
        models: dict[str, ModelSpec] = {}
        contexts: dict[str, ContextSpec] = {}
        overrides: dict[str, OverrideSpec] = {}
        experiments: dict[str, ExperimentSpec] = {}
        providers: dict[str, ProviderSpec] = {}
        settings = SettingsSpec()
        clients: dict[str, ClientSpec] = {}
        rollouts: dict[str, RolloutSpec] = {}
        for config_key, m in self._valid.values():
            if isinstance(m, config_pb2.Model):
                models[config_key.id] = _model_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Context):
                contexts[config_key.id] = _context_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Override):
                overrides[config_key.id] = OverrideSpec(
                    config_key.id, m.model, m.note, _ts(m, "expires")
                )
            elif isinstance(m, config_pb2.Experiment):
                experiments[config_key.id] = _experiment_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Provider):
                providers[config_key.id] = _provider_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Client):
                clients[config_key.id] = _client_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Rollout):
                rollouts[config_key.id] = rollout_spec(
                    config_key.id, m, self._progress.get(config_key.id)
                )
            elif isinstance(m, config_pb2.Settings):
                settings = SettingsSpec(
                    default_model=m.default_model,
                    default_fallbacks=tuple(m.default_fallbacks),
                    alert_webhook_url=m.alert_webhook_url,
                    decision_cache_seconds=m.decision_cache_seconds
                    if m.HasField("decision_cache_seconds")
                    else DEFAULT_DECISION_CACHE_SECONDS,
                    rollout_check_seconds=m.rollout_check_seconds
                    if m.HasField("rollout_check_seconds")
                    else DEFAULT_ROLLOUT_CHECK_SECONDS,
                    history_days=m.history_days
                    if m.HasField("history_days")
                    else DEFAULT_HISTORY_DAYS,
                )
        by_context: dict[str, list[ExperimentSpec]] = {}
        for experiment in sorted(experiments.values(), key=lambda e: e.experiment_id):
            by_context.setdefault(experiment.context, []).append(experiment)
        return Snapshot(
            revision=revision,
            models=MappingProxyType(models),
            contexts=MappingProxyType(contexts),
            overrides=MappingProxyType(overrides),
            experiments=MappingProxyType(experiments),
            experiments_by_context=MappingProxyType({k: tuple(v) for k, v in by_context.items()}),
            providers=MappingProxyType(providers),
            settings=settings,
            env_overrides=self.env_overrides,
            rejections=MappingProxyType(dict(self._rejections)),
            applied_at=now,
            clients=MappingProxyType(clients),
            clients_by_key=MappingProxyType({c.key_sha256: c for c in clients.values()}),
            rollouts=MappingProxyType(rollouts),
            rollouts_by_context=MappingProxyType(
                {
                    r.context: r
                    for r in sorted(rollouts.values(), key=lambda r: r.rollout_id)
                    if r.applies
                }
            ),
        )

    def valid_json(self) -> dict[str, Message]:
        """The values in force, by relative key (for `config get` and diffs)."""
        return {key: message for key, (_, message) in self._valid.items()}
