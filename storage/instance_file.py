"""`<data_dir>/server.json`: where the `modelroute serve` of a data dir can be reached.

Written by the server once it serves, removed when it stops (only by the process that wrote
it), and read by the CLI to find the server and its etcd without guessing (docs/cli.md,
"Finding the server").
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

INSTANCE_FILE_NAME = "server.json"


class InstanceFileError(ValueError):
    """The file exists but cannot be read as an instance description."""


@dataclass(frozen=True)
class InstanceInfo:
    """What a client needs to reach one running `modelroute serve`."""

    pid: int
    # host:port a client on this machine dials (a wildcard bind becomes loopback).
    grpc_address: str
    # The gRPC port speaks TLS (the CLI then needs the CA: --tls-ca / MODELROUTE_TLS_CA).
    tls: bool
    # Comma-separated etcd endpoints the server reads its config from.
    etcd_endpoints: str
    etcd_prefix: str
    # Admin HTTP API + dashboard, e.g. http://127.0.0.1:8081/ ("" when off).
    admin_url: str = ""

    def is_running(self) -> bool:
        """Whether the process that wrote the file still exists."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
        return True


def dial_address(host: str, port: int) -> str:
    """The address a local client dials for a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    return f"{host}:{port}"


def instance_file(data_dir: Path) -> Path:
    """Where a running server describes itself for the CLI: `<data_dir>/server.json`."""
    return data_dir / INSTANCE_FILE_NAME


def write_instance(data_dir: Path, info: InstanceInfo) -> Path:
    """Publish `info` atomically (a reader never sees half a file)."""
    path = instance_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(info), indent=2) + "\n")
    temporary.replace(path)
    return path


def read_instance(data_dir: Path) -> InstanceInfo | None:
    """The published instance of `data_dir`; None when there is no file."""
    path = instance_file(data_dir)
    try:
        raw = json.loads(path.read_text())
        return InstanceInfo(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise InstanceFileError(f"{path} is unreadable ({exc}); remove it") from None


def remove_instance(data_dir: Path, pid: int) -> None:
    """Remove the file if (and only if) process `pid` wrote it: a second server that
    failed to start must not hide the first one.
    """
    try:
        current = read_instance(data_dir)
    except InstanceFileError:
        return
    if current is not None and current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            instance_file(data_dir).unlink()
