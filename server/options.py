"""What `modelroute serve` can be told: every option of one replica, with its default.

Part of the wiring (app.py builds a replica from it; the CLI fills it from flags).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelroute.storage.etcd import DEFAULT_PREFIX, EtcdTls

DEFAULT_BOOTSTRAP = Path(__file__).resolve().parent.parent / "config" / "bootstrap.yaml"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    # None: start an embedded single-node etcd in `data_dir` (seeded when empty).
    etcd_endpoints: str | None = None
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_username: str | None = None
    etcd_password: str | None = None
    # None: SQLite file in `data_dir`.
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(".modelroute"))
    bootstrap: Path = DEFAULT_BOOTSTRAP
    # None: seed only the embedded etcd. True: also seed an external, empty prefix.
    seed: bool | None = None
    shutdown_grace_seconds: float = 10.0
    # Usage reports queued but not yet committed; beyond this ReportUsage answers
    # RESOURCE_EXHAUSTED with RetryInfo instead of growing without bound.
    usage_max_pending: int = 50_000
    # Local copy of the last good config, served when etcd is unreachable at start.
    # None: `<data_dir>/last-good-config.json`.
    last_good_file: Path | None = None
    # How long a starting replica waits for etcd before serving the last-good file.
    etcd_start_timeout_seconds: float = 3.0
    # etcd unreachable for this long raises an `etcd_unreachable` alert.
    etcd_alert_after_seconds: float = 5.0
    # --- security (docs/security.md) ---
    # Admin bearer tokens. None: read env MODELROUTE_ADMIN_TOKENS (comma-separated).
    # No token at all (and no file): AdminService is open, with a warning at start.
    admin_tokens: list[str] | None = None
    # One token per line; re-read when it changes.
    admin_token_file: Path | None = None
    # TLS for gRPC (and the admin HTTP server). A client CA makes it mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # TLS towards etcd: CA to verify it, client cert + key when etcd requires them.
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None

    def etcd_tls(self) -> EtcdTls | None:
        if self.etcd_ca is None and self.etcd_cert is None and self.etcd_key is None:
            return None
        return EtcdTls(self.etcd_ca, self.etcd_cert, self.etcd_key)

    # Admin HTTP API + dashboard + /metrics on this port (0: any free port); None: off.
    admin_port: int | None = None
    # The asyncio event loop implementation: "uvloop" (default) or "asyncio".
    event_loop: str = "uvloop"
    # Checks the admin HTTP bearer token (None: no token required).
    admin_verify_token: Callable[[str | None], bool] | None = None
    # --- set by `serve --workers N` (server/workers.py) for each worker ---
    # Named in the `modelroute-worker` trailing metadata of ResolveModel/ReportUsage.
    worker_name: str = ""
    # The supervising parent: a worker whose parent is gone stops (no orphans).
    parent_pid: int | None = None
    # Bind the gRPC port with SO_REUSEPORT (workers share it).
    reuse_port: bool = False
