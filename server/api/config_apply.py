"""Validated, atomic config changes: the safe path (`modelroute config apply`, ApplyConfig).

A plan validates the changes against the current etcd state with the same builder the
servers use (so "valid here" means "accepted by every replica"), renders a diff, and is
written in one etcd transaction guarded by the revision it was planned against.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from modelroute.storage.etcd import EtcdClient, EtcdConflictError, read_prefix, write_changes

from ..core.config_values import (
    KIND_MESSAGES,
    RUNTIME_KIND,
    SINGLETON_KINDS,
)
from ..core.snapshot import Rejection, SnapshotBuilder
from ..runtime.change_meta import CHANGE_GUARD, with_change_meta

# Directories whose concurrent modification makes a planned change stale (and the change
# companion key: concurrent deletions, see change_meta.CHANGE_GUARD).
GUARDED_DIRS = (
    *(k if k in SINGLETON_KINDS else f"{k}/" for k in KIND_MESSAGES),
    *CHANGE_GUARD,
)


class ConfigFileError(ValueError):
    """The file itself is malformed (not a value problem)."""


def load_config_file(path: Path) -> dict[str, bytes]:
    """YAML (or JSON) with top-level kinds: `settings: {...}`, `models: {id: {...}}`, ...
    Returns relative key → canonical JSON value. Values are checked later, all at once."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc}") from None
    return config_from_mapping(data or {}, str(path))


def config_from_mapping(data: Any, origin: str = "config") -> dict[str, bytes]:
    if not isinstance(data, dict):
        raise ConfigFileError(f"{origin}: expected a mapping of kinds (settings, models, ...)")
    out: dict[str, bytes] = {}
    for kind, entries in data.items():
        if kind not in KIND_MESSAGES:
            raise ConfigFileError(
                f"{origin}: unknown section {kind!r}; expected {', '.join(KIND_MESSAGES)}"
            )
        if kind in SINGLETON_KINDS:
            out[kind] = json.dumps(entries, default=_json_default).encode()
            continue
        if not isinstance(entries, dict):
            raise ConfigFileError(f"{origin}: section {kind!r} must map ids to values")
        for ident, value in entries.items():
            out[f"{kind}/{ident}"] = json.dumps(value, default=_json_default).encode()
    return out


def _json_default(value: object) -> str:
    # YAML turns unquoted RFC 3339 timestamps into datetimes; write them back in the Z form
    # proto-JSON expects.
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


@dataclass(frozen=True)
class Plan:
    base_revision: int
    changes: dict[str, bytes | None]  # only keys whose value really changes
    diff: list[str]
    rejections: list[Rejection]

    @property
    def ok(self) -> bool:
        return not self.rejections


def _pretty(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    try:
        return json.dumps(json.loads(raw), indent=2, sort_keys=True).splitlines()
    except ValueError:
        return raw.decode(errors="replace").splitlines()


def plan(
    current: Mapping[str, bytes],
    base_revision: int,
    changes: Mapping[str, bytes | None],
) -> Plan:
    """Validate `changes` on top of `current` (relative keys) and diff them."""
    config_now = {k: v for k, v in current.items() if not k.startswith(RUNTIME_KIND + "/")}
    effective = {
        k: v for k, v in changes.items() if config_now.get(k) != v and (v or k in config_now)
    }
    builder = SnapshotBuilder()
    now = datetime.now(UTC)
    builder.apply(base_revision, config_now, now, full_state=True)
    _, rejections = builder.apply(base_revision + 1, effective, now)
    diff: list[str] = []
    for key in sorted(effective):
        before, after = _pretty(config_now.get(key)), _pretty(effective[key])
        label = "deleted" if effective[key] is None else ("new" if not before else "changed")
        diff.append(f"--- {key} ({label})")
        diff.extend(
            line
            for line in difflib.unified_diff(before, after, lineterm="", n=2)
            if not line.startswith(("---", "+++"))
        )
    return Plan(base_revision, effective, diff, rejections)


def validate_standalone(values: Mapping[str, bytes]) -> list[Rejection]:
    """Check a file on its own (no etcd): every value parses and references resolve."""
    _, rejections = SnapshotBuilder().apply(1, values, datetime.now(UTC))
    return rejections


async def seed_if_empty(
    client: EtcdClient, prefix: str, bootstrap: Path
) -> tuple[int, Path, int] | None:
    """Write the bootstrap file if the prefix holds no config yet (runtime keys aside).

    Returns (keys written, file, revision), or None when there was config already or
    another replica seeded first. Raises RuntimeError for an invalid bootstrap file.
    """
    _, stored = await read_prefix(client, prefix)
    if any(not key.startswith(RUNTIME_KIND + "/") for key in stored):
        return None
    values = load_config_file(bootstrap)
    try:
        result, revision = await apply_to_etcd(
            client, prefix, dict(values), actor="bootstrap", note=f"seeded from {bootstrap.name}"
        )
    except EtcdConflictError:
        return None  # another replica seeded first
    if not result.ok:
        raise RuntimeError(f"bootstrap config is invalid: {result.rejections}")
    return len(values), bootstrap, revision


async def apply_to_etcd(
    client: EtcdClient,
    prefix: str,
    changes: Mapping[str, bytes | None],
    *,
    expected_revision: int = 0,
    prune: bool = False,
    dry_run: bool = False,
    actor: str | None = None,
    note: str = "",
) -> tuple[Plan, int]:
    """Plan against the live prefix and, unless dry-run or invalid, write atomically.

    `expected_revision` pins the plan to a revision the caller has seen (ApplyConfig);
    0 plans against the state read now. `prune` deletes keys of the sections present in
    `changes` that `changes` does not mention (declarative apply).
    `actor` / `note` go into the history (`config_changes`) through the companion key
    written in the same transaction; None records the write as made straight into etcd.
    Raises EtcdConflictError when etcd changed underneath.
    """
    revision, stored = await read_prefix(client, prefix)
    current = {k: v.value for k, v in stored.items()}
    wanted: dict[str, bytes | None] = dict(changes)
    if prune:
        sections = {k.split("/", 1)[0] for k in changes}
        for key in current:
            if key.split("/", 1)[0] in sections and key not in wanted:
                wanted[key] = None
    result = plan(current, revision, wanted)
    if dry_run or not result.ok or not result.changes:
        return result, 0
    guard = expected_revision or revision
    writes = result.changes if actor is None else with_change_meta(result.changes, actor, note)
    new_revision = await write_changes(client, prefix, writes, guard, GUARDED_DIRS)
    return result, new_revision
