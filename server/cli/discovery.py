"""The one rule by which every command finds the server and its etcd.

1. the flag (`--server`, `--etcd-endpoints`),
2. the environment (`MODELROUTE_TARGET`, `MODELROUTE_ETCD_ENDPOINTS`),
3. the running `modelroute serve` of the data dir named by `--data-dir` /
   `MODELROUTE_DATA_DIR` (default `.modelroute`, the folder `make run` uses), which
   publishes itself in `<data dir>/server.json`.

Nothing found is an error that says what was looked at. There is no built-in address to
fall back to: a guessed address may well be somebody else's server or etcd.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelroute.storage.etcd import DEFAULT_PREFIX
from modelroute.storage.instance_file import (
    InstanceFileError,
    InstanceInfo,
    instance_file,
    read_instance,
)

SERVER_ENV = "MODELROUTE_TARGET"
# The CLI's old name for SERVER_ENV (the SDK always used MODELROUTE_TARGET).
DEPRECATED_SERVER_ENV = "MODELROUTE_SERVER"
DATA_DIR_ENV = "MODELROUTE_DATA_DIR"
ETCD_ENDPOINTS_ENV = "MODELROUTE_ETCD_ENDPOINTS"
ETCD_PREFIX_ENV = "MODELROUTE_ETCD_PREFIX"
DEFAULT_DATA_DIR = Path(".modelroute")


class DiscoveryError(Exception):
    """Nothing names a server (or etcd); the message says where the CLI looked."""


@dataclass(frozen=True)
class ServerLocation:
    address: str
    # How it was found, for error messages: "--server", "MODELROUTE_TARGET", a file.
    source: str
    # The instance file says the port speaks TLS (None: not known).
    tls: bool | None = None


@dataclass(frozen=True)
class EtcdLocation:
    endpoints: str
    prefix: str
    source: str


def server_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """MODELROUTE_TARGET, else the deprecated MODELROUTE_SERVER (with a warning)."""
    environ = os.environ if environ is None else environ
    if value := environ.get(SERVER_ENV, "").strip():
        return value
    if value := environ.get(DEPRECATED_SERVER_ENV, "").strip():
        warnings.warn(
            f"{DEPRECATED_SERVER_ENV} is deprecated; set {SERVER_ENV} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    return None


def data_dir_named(flag: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """The data dir: --data-dir, else MODELROUTE_DATA_DIR, else `.modelroute`."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return flag
    if value := environ.get(DATA_DIR_ENV, "").strip():
        return Path(value)
    return DEFAULT_DATA_DIR


def running_instance(data_dir: Path, wanted: str) -> InstanceInfo:
    """The live server of `data_dir`, or a DiscoveryError explaining what is missing.
    `wanted` names what the caller needed, e.g. "the server (--server)"."""
    path = instance_file(data_dir).absolute()
    try:
        info = read_instance(data_dir)
    except InstanceFileError as exc:
        raise DiscoveryError(str(exc)) from None
    if info is None:
        raise DiscoveryError(
            f"no modelroute server found: {wanted} is not given, and no server runs in the "
            f"data dir {path.parent} (no {path.name}; `modelroute serve` writes it there).\n"
            f"Start one (`make run`), or name the data dir it runs in (--data-dir DIR or "
            f"{DATA_DIR_ENV}=DIR)."
        )
    if not info.is_running():
        raise DiscoveryError(
            f"the server recorded in {path} (pid {info.pid}) is not running; start it "
            f"(`make run`) or name another data dir (--data-dir / {DATA_DIR_ENV})."
        )
    return info


def find_server(
    flag: str | None, data_dir: Path | None, environ: Mapping[str, str] | None = None
) -> ServerLocation:
    """Where the gRPC server is, by the rule in the module docstring."""
    environ = os.environ if environ is None else environ
    if flag:
        return ServerLocation(flag, "--server")
    if from_env := server_from_environment(environ):
        named = SERVER_ENV if environ.get(SERVER_ENV, "").strip() else DEPRECATED_SERVER_ENV
        return ServerLocation(from_env, named)
    directory = data_dir_named(data_dir, environ)
    wanted = f"the server address (--server HOST:PORT or {SERVER_ENV})"
    info = running_instance(directory, wanted)
    return ServerLocation(info.grpc_address, str(instance_file(directory)), tls=info.tls)


def find_etcd(
    endpoints_flag: str | None,
    prefix_flag: str | None,
    data_dir: Path | None,
    environ: Mapping[str, str] | None = None,
) -> EtcdLocation:
    """Where the config lives in etcd, by the rule in the module docstring. The prefix
    comes from --etcd-prefix / MODELROUTE_ETCD_PREFIX, else the server's, else the default."""
    environ = os.environ if environ is None else environ
    prefix = prefix_flag or environ.get(ETCD_PREFIX_ENV, "").strip() or None
    if endpoints_flag:
        return EtcdLocation(endpoints_flag, prefix or DEFAULT_PREFIX, "--etcd-endpoints")
    if from_env := environ.get(ETCD_ENDPOINTS_ENV, "").strip():
        return EtcdLocation(from_env, prefix or DEFAULT_PREFIX, ETCD_ENDPOINTS_ENV)
    directory = data_dir_named(data_dir, environ)
    wanted = f"etcd (--etcd-endpoints or {ETCD_ENDPOINTS_ENV})"
    info = running_instance(directory, wanted)
    return EtcdLocation(
        info.etcd_endpoints, prefix or info.etcd_prefix, str(instance_file(directory))
    )
