"""The immutable, fully validated configuration a replica serves, and how it is built.

Flow (after flagd / go-control-plane): raw etcd values → per-value parse and validation →
reference checks against the whole candidate → one immutable `Snapshot` → one reference
swap. A value that fails keeps the last valid value for its key in force; the failure is
recorded as a `Rejection` for status, logs, metrics and spans.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from google.protobuf.message import Message
from modelroute.config.v1 import config_pb2

from .config_values import (
    RUNTIME_KIND,
    ConfigKey,
    ConfigValueError,
    parse_key,
    parse_value,
)
from .rollout_spec import (
    PROGRESS_DIR,
    RolloutProgress,
    RolloutSpec,
    exclusive_context_conflict,
    parse_progress,
    rollout_spec,
)
from .specs import (
    DEFAULT_DECISION_CACHE_SECONDS,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_ROLLOUT_CHECK_SECONDS,
    DEFAULT_WARN_RATIO,
    BudgetSpec,
    ClientSpec,
    ContextSpec,
    ExperimentSpec,
    ModelSpec,
    OverrideSpec,
    ProviderSpec,
    SettingsSpec,
    VariantSpec,
    client_spec,
    context_spec,
    experiment_spec,
    model_spec,
    provider_spec,
    ts,
)

# Re-exported: callers import the specs from here, with the snapshot that holds them.
__all__ = [
    "DEFAULT_DECISION_CACHE_SECONDS",
    "DEFAULT_HISTORY_DAYS",
    "DEFAULT_ROLLOUT_CHECK_SECONDS",
    "DEFAULT_WARN_RATIO",
    "BudgetSpec",
    "ClientSpec",
    "ContextSpec",
    "ExperimentSpec",
    "ModelSpec",
    "OverrideSpec",
    "ProviderSpec",
    "Rejection",
    "SettingsSpec",
    "Snapshot",
    "SnapshotBuilder",
    "VariantSpec",
    "env_overrides_from",
    "env_variable_for",
]

log = logging.getLogger("modelroute.config")
_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


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
                models[config_key.id] = model_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Context):
                contexts[config_key.id] = context_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Override):
                overrides[config_key.id] = OverrideSpec(
                    config_key.id, m.model, m.note, ts(m, "expires")
                )
            elif isinstance(m, config_pb2.Experiment):
                experiments[config_key.id] = experiment_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Provider):
                providers[config_key.id] = provider_spec(config_key.id, m)
            elif isinstance(m, config_pb2.Client):
                clients[config_key.id] = client_spec(config_key.id, m)
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
