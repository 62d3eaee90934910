"""The rollout controller's etcd access: one leader among replicas, the progress keys it
reads, and its one guarded write (keys relative to the prefix).
"""

from __future__ import annotations

from collections.abc import Mapping

import aetcd

from .errors import StoreUnavailableError
from .leader import DEFAULT_TTL, LeaderElection


class EtcdRolloutStore:
    """The rollout controller's guarded progress writes to etcd."""

    def __init__(self, client: aetcd.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, key: str) -> bytes:
        return f"{self.prefix}{key}".encode()

    def election(self, key: str, identity: str, ttl: int = DEFAULT_TTL) -> LeaderElection:
        """A leased leader key (see `leader.py`); its holder's id is `identity`."""
        return LeaderElection(self.client, self._key(key), identity, ttl=ttl)

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """The value (None: absent) and its mod revision (0: absent)."""
        try:
            stored = await self.client.get(self._key(key))
        except Exception as exc:
            raise StoreUnavailableError("etcd", str(exc) or type(exc).__name__) from exc
        return (stored.value, stored.mod_revision) if stored is not None else (None, 0)

    async def put_guarded(
        self,
        key: str,
        value: bytes,
        *,
        expected_mod_revision: int,
        fence: tuple[str, str] | None = None,
        also: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Write `key` (and `also`, in the same transaction) only if `key` is still at
        `expected_mod_revision` (0: absent) and, with `fence` = (key, value), that key still
        holds that value (e.g. this replica still leads). True if written.
        """
        tx = self.client.transactions
        compare = [tx.mod(self._key(key)) == expected_mod_revision]
        if fence is not None:
            compare.append(tx.value(self._key(fence[0])) == fence[1].encode())
        success = [tx.put(self._key(key), value)]
        success += [tx.put(self._key(k), v) for k, v in (also or {}).items()]
        try:
            succeeded, _ = await self.client.transaction(
                compare=compare, success=success, failure=[]
            )
        except Exception as exc:
            raise StoreUnavailableError("etcd", str(exc) or type(exc).__name__) from exc
        return bool(succeeded)
