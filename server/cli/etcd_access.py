"""Reading etcd directly, for the operations AdminService offers no RPC for yet
(`config get`, the key list behind `config apply --prune`, `cooldown list/clear`).

The etcd is found by the same rule as the server (discovery.py), never guessed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from modelroute.storage.etcd import ETCD_FAILURES, EtcdClient, connect, parse_endpoints

from .discovery import (
    DATA_DIR_ENV,
    ETCD_ENDPOINTS_ENV,
    DiscoveryError,
    EtcdLocation,
    find_etcd,
)
from .output import failure

T = TypeVar("T")

EtcdOpt = Annotated[
    str | None,
    typer.Option(
        help=f"etcd endpoints, comma-separated. Default: ${ETCD_ENDPOINTS_ENV}, else the "
        "etcd of the server of --data-dir.",
        rich_help_panel="Connection",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=DATA_DIR_ENV,
        help="Data dir of the running server whose etcd to use. Default: .modelroute",
        rich_help_panel="Connection",
    ),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option(
        help="Key prefix. Default: $MODELROUTE_ETCD_PREFIX, else the server's.",
        rich_help_panel="Connection",
    ),
]


def locate_etcd(endpoints: str | None, prefix: str | None, data_dir: Path | None) -> EtcdLocation:
    """The etcd by the discovery rule; exits with the reason when there is none."""
    try:
        return find_etcd(endpoints, prefix, data_dir)
    except DiscoveryError as exc:
        raise failure(str(exc), code=2) from None


def with_etcd(location: EtcdLocation, work: Callable[[EtcdClient], Awaitable[T]]) -> T:
    """Run `work` with a client of `location`; unreachable etcd exits with code 2."""

    async def run() -> T:
        client = connect(parse_endpoints(location.endpoints))
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except ETCD_FAILURES as exc:
        raise failure(
            f"cannot reach etcd at {location.endpoints} (from {location.source}): {exc}", 2
        ) from None
