"""`modelroute config history | show --at | diff | rollback` and `config apply --impact`:
the CLI side of config history and impact preview, all through AdminService (which reads
the history from the database and checks the admin token)."""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2

from .connection import Connection, connected
from .expiry import ExpiryError, parse_duration
from .output import failure, print_diff, to_json

NoteOpt = Annotated[str, typer.Option(help="Why: recorded with the change in the config history.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the RPC's JSON.")]
EXIT_CONFLICT = 3
# History reads and impact previews scan the database: longer than a plain admin call.
HISTORY_TIMEOUT_SECONDS = 60.0


def conflict_exits_3(error: grpc.Call) -> None:
    """ABORTED (the config changed since it was read) exits with 3, like `config apply`."""
    if error.code() == grpc.StatusCode.ABORTED:
        raise failure(f"conflict: {error.details()}", EXIT_CONFLICT)


def since_timestamp(text: str | None) -> timestamp_pb2.Timestamp | None:
    """`--since 24h` (that long ago) or an ISO date/time (UTC when no offset)."""
    if not text:
        return None
    try:
        moment = datetime.now(UTC) - parse_duration(text)
    except ExpiryError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise failure(
                "--since: expected a duration (24h, 7d) or an ISO date/time (2026-11-01T12:00Z)"
            ) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _short(value: str | None) -> str:
    if value is None:
        return "(absent)"
    return value if len(value) <= 60 else value[:57] + "..."


def _pretty(value: str | None) -> list[str]:
    if value is None:
        return []
    try:
        return json.dumps(json.loads(value), indent=2, sort_keys=True).splitlines()
    except ValueError:
        return value.splitlines()


def diff_states(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Per changed key: a header and a unified diff of the pretty JSON."""
    lines: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        label = "deleted" if after is None else ("new" if before is None else "changed")
        lines.append(f"--- {key} ({label})")
        lines.extend(
            line
            for line in difflib.unified_diff(_pretty(before), _pretty(after), lineterm="", n=2)
            if not line.startswith(("---", "+++"))
        )
    return lines


def history(
    key_prefix: Annotated[
        str, typer.Argument(help="Only keys starting with this, e.g. overrides/.")
    ] = "",
    since: Annotated[
        str | None, typer.Option(help="Only changes since: a duration (24h, 7d) or ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 50,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Who changed which key, when, from what to what, and why (newest first)."""
    request = admin_pb2.ListConfigChangesRequest(key_prefix=key_prefix, limit=limit)
    stamp = since_timestamp(since)
    if stamp is not None:
        request.since.CopyFrom(stamp)
    reply = connection.admin("ListConfigChanges", request, timeout=HISTORY_TIMEOUT_SECONDS)
    if as_json:
        typer.echo(to_json(reply))
        return
    if not reply.changes:
        typer.echo("no recorded changes" + (f" under {key_prefix}" if key_prefix else ""))
        return
    for change in reply.changes:
        when = change.changed_at.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S")
        before = change.value_before_json if change.HasField("value_before_json") else None
        after = change.value_after_json if change.HasField("value_after_json") else None
        note = f"  # {change.note}" if change.note else ""
        typer.echo(f"{change.revision:>8}  {when}  {change.actor:<20} {change.key}{note}")
        typer.echo(f"{'':>10}{_short(before)} -> {_short(after)}")
    typer.echo(f"(oldest revision kept: {reply.oldest_revision})")


def _values_at(connection: Connection, revision: int) -> admin_pb2.GetConfigAtResponse:
    request = admin_pb2.GetConfigAtRequest(revision=revision)
    reply: admin_pb2.GetConfigAtResponse = connection.admin(
        "GetConfigAt", request, timeout=HISTORY_TIMEOUT_SECONDS
    )
    return reply


def show(
    at: Annotated[int, typer.Option("--at", help="The etcd revision (0: the newest).")] = 0,
    *,
    connection: Connection,
) -> None:
    """Every decision-shaping key's value in force at a revision (from the history)."""
    reply = _values_at(connection, at)
    values: dict[str, Any] = {}
    for key, raw in sorted(reply.values_json.items()):
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    typer.echo(json.dumps({"revision": reply.revision, "values": values}, indent=2))


def diff(
    rev_a: Annotated[int, typer.Argument(help="The older revision.")],
    rev_b: Annotated[int, typer.Argument(help="The newer one (default: the newest).")] = 0,
    *,
    connection: Connection,
) -> None:
    """What changed between two revisions."""
    old, new = _values_at(connection, rev_a), _values_at(connection, rev_b)
    lines = diff_states(dict(old.values_json), dict(new.values_json))
    differing = sum(1 for line in lines if line.startswith("--- "))
    typer.echo(f"revision {old.revision} -> {new.revision}: {differing} key(s) differ")
    print_diff(lines)


def rollback(
    revision: Annotated[
        int, typer.Argument(help="Put every key back to its value at this revision.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Show the diff only; write nothing.")] = False,
    note: NoteOpt = "",
    *,
    connection: Connection,
) -> None:
    """Restore the configuration of a revision in one guarded etcd transaction."""
    reply = connection.admin(
        "RollbackConfig",
        admin_pb2.RollbackConfigRequest(revision=revision, dry_run=dry_run, note=note),
        on_error=conflict_exits_3,
    )
    print_diff(list(reply.diff))
    if not reply.changed_keys:
        typer.echo(f"Nothing to do: the configuration already equals revision {revision}.")
    elif dry_run:
        typer.echo(f"Dry run: {reply.changed_keys} key(s) would change; nothing written.")
    else:
        typer.echo(
            f"Rolled back {reply.changed_keys} key(s) to revision {revision} "
            f"at revision {reply.revision}."
        )


def print_impact(
    connection: Connection, values: dict[str, bytes], window: str, as_json: bool
) -> None:
    """`config apply --impact`: replay the window's traffic under the proposed config."""
    try:
        window_seconds = int(parse_duration(window).total_seconds())
    except ExpiryError as exc:
        raise failure(f"--window: {exc}") from None
    request = admin_pb2.PreviewConfigChangeRequest(
        changes=[admin_pb2.KeyChange(key=k, value_json=v.decode()) for k, v in values.items()],
        window_seconds=window_seconds,
    )
    reply = connection.admin("PreviewConfigChange", request, timeout=HISTORY_TIMEOUT_SECONDS)
    if as_json:
        typer.echo(to_json(reply))
        return
    print_diff(list(reply.diff))
    typer.echo(
        f"Impact over the last {window} ({reply.calls_replayed} recorded calls replayed); "
        "nothing written."
    )
    for ctx in reply.contexts:
        typer.secho(
            f"\n{ctx.context}: {ctx.changed_calls}/{ctx.calls} calls change model "
            f"({ctx.changed_share:.1%}); cost/day ${ctx.cost_per_day_before_usd:.2f} -> "
            f"${ctx.cost_per_day_after_usd:.2f}",
            bold=True,
        )
        for move in ctx.moves:
            typer.echo(f"  {move.from_model} -> {move.to_model}: {move.calls} calls")
        for move in ctx.variant_moves:
            typer.echo(
                f"  users {move.from_variant or '(no experiment)'} -> "
                f"{move.to_variant or '(no experiment)'}: {move.users}"
            )
        if ctx.unreachable_models:
            typer.secho(
                f"  no longer reachable: {', '.join(ctx.unreachable_models)}",
                fg=typer.colors.YELLOW,
            )
        if ctx.calls_without_user:
            typer.echo(f"  {ctx.calls_without_user} calls had no user id")
    typer.echo("\nNot replayed: " + "; ".join(reply.caveats))


def register(config_app: typer.Typer) -> None:
    """Add the history commands to the `config` group."""
    config_app.command("history")(connected(history))
    config_app.command("show")(connected(show))
    config_app.command("diff")(connected(diff))
    config_app.command("rollback")(connected(rollback))
