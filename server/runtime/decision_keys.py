"""The deployment-wide decision-id signing key: `runtime/decision-key` in etcd (hex).

The first replica to start creates it (a create-if-absent transaction, so concurrent
starts agree on one key); every replica reads it through the config watch and keeps a
local copy in `<data-dir>/decision-key`, so a replica that starts while etcd is down still
issues ids the others accept. Deleting the key in etcd rotates it: the next replica start
creates a new one; ids signed with the old key become unknown (NOT_FOUND) on replicas that
never used it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from modelroute.storage.runtime_store import RuntimeStore
from modelroute.storage.updates import ConfigUpdate

from ..core.decision_token import DecisionTokens, new_key
from .keys import DECISION_KEY

log = logging.getLogger("modelroute.decision_keys")


def load_local_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) >= 16 else None


def save_local_key(path: Path, key: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key.hex())
        temporary.replace(path)
    except OSError as exc:
        log.warning("could not keep a local copy of the decision key in %s: %s", path, exc)


class DecisionKeyManager:
    """Keeps `tokens` signing with the etcd key (watch updates) and creates it if absent."""

    def __init__(self, tokens: DecisionTokens, local_file: Path) -> None:
        self.tokens = tokens
        self._local_file = local_file

    @classmethod
    def starting(cls, local_file: Path) -> DecisionKeyManager:
        return cls(DecisionTokens(load_local_key(local_file) or new_key()), local_file)

    def apply_update(self, update: ConfigUpdate) -> None:
        raw = update.changes.get(DECISION_KEY)
        if raw is None:
            return
        try:
            key = bytes.fromhex(raw.decode())
        except ValueError:
            log.error("ignoring malformed %s (expected hex)", DECISION_KEY)
            return
        if len(key) < 16:
            log.error("ignoring %s: shorter than 16 bytes", DECISION_KEY)
            return
        if self.tokens.adopt(key) or not self._local_file.exists():
            save_local_key(self._local_file, key)

    async def ensure_in_etcd(self, store: RuntimeStore) -> None:
        """Propose this replica's key until etcd holds one (retries while etcd is down)."""
        proposal = self.tokens.key
        while True:
            try:
                await store.create_if_absent(DECISION_KEY, proposal.hex().encode())
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd down: the watch brings it later
                log.debug("decision key not ensured yet: %s", exc)
                await asyncio.sleep(1.0)
