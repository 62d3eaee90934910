"""`modelroute override`: pin a context to a model for a while (an operator override)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from .config import apply_changes
from .connection import Connection, connected
from .expiry import ExpiryError, parse_duration, rfc3339
from .output import failure, print_diff

app = typer.Typer(help="Operator overrides (overrides/<context>).", no_args_is_help=True)


@app.command("set")
@connected
def override_set(
    context: Annotated[str, typer.Argument(help="The context, e.g. rag.answer.")],
    model: Annotated[str, typer.Argument(help="The model to serve for it.")],
    for_: Annotated[
        str | None,
        typer.Option("--for", help="How long, from now: 90s, 15m, 1h, 1h30m, 2d, 1w."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Until this instant (ISO; UTC if no offset).")
    ] = None,
    note: Annotated[str, typer.Option(help="Why (shown in status and decisions).")] = "",
    *,
    connection: Connection,
) -> None:
    """Serve MODEL for CONTEXT (over experiments, preferences and the context's model)
    until the expiry; without --for or --until, until `override clear`."""
    now = datetime.now(UTC)
    value: dict[str, str] = {"model": model}
    if note:
        value["note"] = note
    if for_ is not None and until is not None:
        raise failure("--for and --until exclude each other")
    if for_ is not None:
        try:
            value["expires"] = rfc3339(now + parse_duration(for_))
        except ExpiryError as exc:
            raise failure(f"--for: {exc}") from None
    elif until is not None:
        try:
            instant = datetime.fromisoformat(until)
        except ValueError:
            raise failure("--until: expected an ISO time, e.g. 2027-01-31T18:00Z") from None
        instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
        if instant <= now:
            raise failure(f"--until {until} is already past: the override would never apply")
        value["expires"] = rfc3339(instant)
    key = f"overrides/{context}"
    # The note also goes to the config history as the change's reason.
    reply = apply_changes(connection, {key: json.dumps(value).encode()}, note=note)
    print_diff(list(reply.diff))
    expiry = f" until {value['expires']}" if "expires" in value else " until cleared"
    typer.echo(f"{context} → {model}{expiry} (revision {reply.revision or 'unchanged'})")


@app.command("clear")
@connected
def override_clear(
    context: Annotated[str, typer.Argument(help="The context whose override ends now.")],
    *,
    connection: Connection,
) -> None:
    """End CONTEXT's override now."""
    reply = apply_changes(connection, {f"overrides/{context}": None})
    if not reply.changed_keys:
        raise failure(f"no override for {context}")
    typer.echo(f"cleared the override of {context} (revision {reply.revision})")
