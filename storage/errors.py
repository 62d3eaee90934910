"""The one error a store raises when its backend cannot be reached.

Stores translate their driver's exceptions (SQLAlchemy, aetcd, gRPC) into
`StoreUnavailableError`, so the services above translate one storage-level error into
one gRPC status and never import a driver.
"""

from __future__ import annotations

from typing import Literal

Backend = Literal["database", "etcd"]


class StoreUnavailableError(ConnectionError):
    """The backing store failed or is unreachable; nothing was stored or read.

    Args:
        backend: Which store failed ("database" or "etcd").
        detail: What callers may be shown: the driver's exception type name for the
            database (its message may echo stored data), the connection error for etcd.
    """

    def __init__(self, backend: Backend, detail: str) -> None:
        super().__init__(f"{backend} unavailable ({detail})")
        self.backend: Backend = backend
        self.detail = detail
