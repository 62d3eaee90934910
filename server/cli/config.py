"""`modelroute config`: validate, diff, apply and inspect the configuration."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.etcd import EtcdClient, read_prefix

from ..api.config_apply import (
    ConfigFileError,
    load_config_file,
    validate_standalone,
)
from ..api.errors import decode_details
from ..core.config_values import RUNTIME_KIND
from .connection import Connection, connected
from .etcd_access import (
    DataDirOpt,
    EtcdOpt,
    PrefixOpt,
    locate_etcd,
    with_etcd,
)
from .expiry import (
    ExpiryError,
    expired_overrides,
    resolve_relative_expiries,
)
from .history import NoteOpt, print_impact
from .output import failure, print_diff, to_json, warn

app = typer.Typer(help="Inspect and change the configuration.", no_args_is_help=True)
# How long a write waits for the server to serve it before saying so.
SERVED_WAIT_SECONDS = 5.0


def load_file(file: Path) -> dict[str, bytes]:
    """The file's values with relative expiries (`expires: +1h`) made absolute; exits
    with the reason when the file cannot be read."""
    try:
        return resolve_relative_expiries(load_config_file(file), datetime.now(UTC))
    except (ConfigFileError, ExpiryError) as exc:
        raise failure(str(exc)) from None


def print_rejections(rejections: list[tuple[str, str]]) -> None:
    typer.secho(f"{len(rejections)} invalid value(s); nothing written:", fg="red", err=True)
    for key, error in rejections:
        typer.secho(f"  {key}: {error}", fg="red", err=True)


def apply_changes(
    connection: Connection,
    changes: dict[str, bytes | None],
    *,
    expected_revision: int = 0,
    dry_run: bool = False,
    note: str = "",
) -> admin_pb2.ApplyConfigResponse:
    """Send `changes` through AdminService.ApplyConfig; invalid values and conflicts
    exit with codes 1 and 3 (nothing is written in either case)."""
    request = admin_pb2.ApplyConfigRequest(
        changes=[
            admin_pb2.KeyChange(key=key, delete=True)
            if value is None
            else admin_pb2.KeyChange(key=key, value_json=value.decode())
            for key, value in changes.items()
        ],
        expected_revision=expected_revision,
        dry_run=dry_run,
        note=note,
    )

    def refused(error: grpc.Call) -> None:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            bad_request: Any = decode_details(error).get("BadRequest")
            if bad_request is not None:
                print_rejections([(v.field, v.description) for v in bad_request.field_violations])
                raise typer.Exit(1)
        if error.code() == grpc.StatusCode.ABORTED:
            raise failure(f"conflict: {error.details()}", code=3)

    reply: admin_pb2.ApplyConfigResponse = connection.admin(
        "ApplyConfig", request, on_error=refused
    )
    if reply.revision:
        wait_until_served(connection, reply.revision)
    return reply


def wait_until_served(connection: Connection, revision: int) -> None:
    """Return once the server serves `revision` (a watch round trip, milliseconds), so the
    next command already sees the change; warn if that takes longer than a few seconds."""
    deadline = time.monotonic() + SERVED_WAIT_SECONDS
    while True:
        status = connection.admin("GetConfigStatus", admin_pb2.GetConfigStatusRequest())
        if status.config_revision >= revision:
            return
        if time.monotonic() > deadline:
            warn(
                f"written at revision {revision}, but the server still serves revision "
                f"{status.config_revision} (see `modelroute config status`)"
            )
            return
        time.sleep(0.02)


def _pruned(file_values: dict[str, bytes], stored: set[str]) -> dict[str, None]:
    """Keys of the file's sections that etcd holds and the file does not list."""
    sections = {key.split("/", 1)[0] for key in file_values}
    return {
        key: None
        for key in sorted(stored)
        if key.split("/", 1)[0] in sections and key not in file_values
    }


@app.command("apply")
@connected
def config_apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="YAML file (see config/).")],
    dry_run: Annotated[bool, typer.Option(help="Validate and show the diff only.")] = False,
    prune: Annotated[
        bool, typer.Option(help="Delete keys of the file's sections that it does not list.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Write overrides even if their `expires` is already past.")
    ] = False,
    note: NoteOpt = "",
    impact: Annotated[
        bool, typer.Option(help="Replay recorded traffic under the change; write nothing.")
    ] = False,
    window: Annotated[str, typer.Option(help="Traffic replayed by --impact.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="--impact: print JSON.")] = False,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = None,
    *,
    connection: Connection,
) -> None:
    """Validate, diff and write a config file in one guarded transaction (ApplyConfig).

    An override may expire relative to now: `expires: +1h` (s, m, h, d, w)."""
    values = load_file(file)
    if impact:
        print_impact(connection, values, window, as_json)
        return
    expired = expired_overrides(values, datetime.now(UTC))
    for key, expires in sorted(expired.items()):
        warn(f"{key} expired at {expires}: it would never apply")
    if expired and not force and not dry_run:
        raise failure(
            "refusing to write expired overrides (fix `expires`, e.g. +1h, or pass --force)"
        )
    changes: dict[str, bytes | None] = dict(values)
    expected_revision = 0
    if prune:
        # No RPC lists the stored keys yet: read them from etcd (found like the server).
        location = locate_etcd(etcd_endpoints, etcd_prefix, connection.data_dir)

        async def stored_keys(client: EtcdClient) -> tuple[int, set[str]]:
            revision, stored = await read_prefix(client, location.prefix)
            return revision, {k for k in stored if not k.startswith(RUNTIME_KIND + "/")}

        expected_revision, stored = with_etcd(location, stored_keys)
        changes |= _pruned(values, stored)
    if not changes:
        typer.echo("No changes.")
        return
    reply = apply_changes(
        connection, changes, expected_revision=expected_revision, dry_run=dry_run, note=note
    )
    if not reply.changed_keys:
        typer.echo("No changes.")
    print_diff(list(reply.diff))
    if dry_run:
        typer.echo(f"Dry run: {reply.changed_keys} key(s) would change; nothing written.")
    elif reply.changed_keys:
        typer.echo(f"Applied {reply.changed_keys} key(s) at revision {reply.revision}.")


@app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Option("-f", "--file", help="YAML file to check.")],
) -> None:
    """Check a config file on its own (no server or etcd needed)."""
    values = load_file(file)
    rejections = validate_standalone(values)
    if rejections:
        print_rejections([(r.key, r.error) for r in rejections])
        raise typer.Exit(1)
    for key, expires in sorted(expired_overrides(values, datetime.now(UTC)).items()):
        warn(f"{key} expired at {expires}: it would never apply")
    typer.echo(f"{file}: {len(values)} key(s), all valid.")


@app.command("get")
def config_get(
    key: Annotated[
        str | None, typer.Argument(help="Relative key, e.g. contexts/rag.answer.")
    ] = None,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print values stored in etcd (all, one key, or a section like `models/`)."""
    location = locate_etcd(etcd_endpoints, etcd_prefix, data_dir)

    async def read(client: EtcdClient) -> tuple[int, dict[str, bytes]]:
        revision, stored = await read_prefix(client, location.prefix)
        return revision, {k: v.value for k, v in stored.items()}

    revision, values = with_etcd(location, read)
    selected = {k: v for k, v in values.items() if key is None or k == key or k.startswith(key)}
    if key and not selected:
        raise failure(f"no key {location.prefix}{key}")
    out: dict[str, Any] = {}
    for name, raw in sorted(selected.items()):
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw.decode(errors="replace")
    typer.echo(json.dumps({"revision": revision, "values": out}, indent=2))


@app.command("status")
@connected
def config_status(*, connection: Connection) -> None:
    """What the server serves: revision, rejected values, env overrides, etcd state.
    Exit code 4 when values are rejected (scripts can alert on it)."""
    status = connection.admin("GetConfigStatus", admin_pb2.GetConfigStatusRequest())
    typer.echo(to_json(status))
    if status.rejected_keys:
        sys.exit(4)
