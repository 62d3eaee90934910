"""What a config source delivers: the update types every consumer of the watch shares.

The etcd source (storage/etcd.py) produces these; the config manager, the runtime state
(cooldowns, quotas, preferences, the decision key) and tests consume them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A stored value and the store revision that last modified it."""

    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """Changes of one etcd revision (relative key → value, None when deleted).

    With `full_state` the mapping is the whole prefix (after a connect, reconnect or
    compaction): keys absent from it no longer exist.
    """

    revision: int
    changes: Mapping[str, bytes | None]
    full_state: bool
    # Full state only: each key's mod revision, so the served revision can be that of the
    # newest change that matters rather than the read's (which any runtime write moves).
    key_revisions: Mapping[str, int] | None = None


class ConfigSource(Protocol):
    """Anything that yields config updates (etcd in production; one small interface)."""

    connected: bool
    disconnected_since: datetime | None

    def updates(self) -> AsyncIterator[ConfigUpdate]:
        """Yield a full state first, then changes per revision, resyncing as needed."""
        ...
