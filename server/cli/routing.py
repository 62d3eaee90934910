"""`modelroute resolve`: ask the server which model it would use, and why."""

from __future__ import annotations

from typing import Annotated

import typer
from modelroute.v1 import router_pb2, types_pb2

from .connection import Connection, connected
from .output import to_json


@connected
def resolve(
    context: Annotated[str, typer.Argument(help="The call site, e.g. rag.answer.")],
    user: Annotated[str, typer.Option(help="User id.")] = "",
    tier: Annotated[str, typer.Option(help="User tier, e.g. free or premium.")] = "",
    exclude: Annotated[list[str] | None, typer.Option(help="Model to skip (repeatable).")] = None,
    *,
    connection: Connection,
) -> None:
    """Ask the server which model it would use, and why (JSON)."""
    request = router_pb2.ResolveModelRequest(
        context=context, user=types_pb2.User(id=user, tier=tier), exclude_models=exclude or []
    )
    typer.echo(to_json(connection.router("ResolveModel", request)))
