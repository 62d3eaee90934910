"""`modelroute cooldown`: models and providers cooling down on every replica.

AdminService has no cooldown RPC yet, so these read and delete the leased etcd keys
through the runtime-state port (storage/runtime_store.py), in the etcd found by the
discovery rule (never a guessed one).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from modelroute.storage.etcd import EtcdClient
from modelroute.storage.runtime_store import EtcdRuntimeStore

from ..runtime.keys import COOLDOWN_DIR
from ..runtime.runtime_state import clear_cooldown
from .etcd_access import (
    DataDirOpt,
    EtcdOpt,
    PrefixOpt,
    locate_etcd,
    with_etcd,
)
from .output import failure

app = typer.Typer(help="Models and providers cooling down.", no_args_is_help=True)


@app.command("list")
def cooldown_list(
    etcd_endpoints: EtcdOpt = None, etcd_prefix: PrefixOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Active cooldowns (shared by every replica), as JSON."""
    location = locate_etcd(etcd_endpoints, etcd_prefix, data_dir)

    async def read(client: EtcdClient) -> dict[str, Any]:
        stored = await EtcdRuntimeStore(client, location.prefix).read_dir(COOLDOWN_DIR)
        return {name: json.loads(value.value) for name, value in sorted(stored.entries.items())}

    typer.echo(json.dumps(with_etcd(location, read), indent=2))


@app.command("clear")
def cooldown_clear(
    subject: Annotated[str, typer.Argument(help="A model id, or provider:<name>.")],
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """End a cooldown now, on every replica."""
    location = locate_etcd(etcd_endpoints, etcd_prefix, data_dir)
    key = (
        f"providers/{subject.removeprefix('provider:')}"
        if subject.startswith("provider:")
        else f"models/{subject}"
    )

    async def clear(client: EtcdClient) -> bool:
        return await clear_cooldown(EtcdRuntimeStore(client, location.prefix), key)

    if not with_etcd(location, clear):
        raise failure(f"no active cooldown for {key}")
    typer.echo(f"cleared cooldown for {key}")
