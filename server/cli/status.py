"""`modelroute quotas` and `modelroute alerts`: what limits and alerts say now."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from modelroute.admin.v1 import admin_pb2

from .connection import Connection, connected
from .output import message_dict, table, to_json, when

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@connected
def quotas(as_json: JsonOpt = False, *, connection: Connection) -> None:
    """Provider limits and context budgets, summed over every live replica."""
    status = connection.admin("GetConfigStatus", admin_pb2.GetConfigStatusRequest())
    if as_json:
        summary = {
            "live_replicas": status.live_replicas,
            "quotas": [message_dict(q) for q in status.quotas],
            "budgets": [message_dict(b) for b in status.budgets],
        }
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"live replicas: {status.live_replicas}")
    if status.quotas:
        rows = [
            [
                q.provider,
                q.limit,
                str(q.limit_value),
                str(q.limit_value - q.remaining),
                str(q.remaining),
                f"{100 * (q.limit_value - q.remaining) // max(q.limit_value, 1)}%",
                when(q.reset_at),
                "EXCEEDED" if q.is_exceeded else "ok",
            ]
            for q in status.quotas
        ]
        headers = ["PROVIDER", "LIMIT", "VALUE", "USED", "REMAINING", "USE", "RESETS", "STATE"]
        typer.echo(table(headers, rows))
    else:
        typer.echo("no provider limits configured (providers/<name> in etcd)")
    if status.budgets:
        rows = [
            [
                b.context,
                f"${b.limit_usd:.2f}",
                f"${b.spent_usd:.2f}",
                f"{int(100 * b.spent_usd // b.limit_usd)}%" if b.limit_usd else "-",
                b.on_exceeded,
                when(b.reset_at),
                "EXCEEDED" if b.is_exceeded else "ok",
            ]
            for b in status.budgets
        ]
        headers = ["CONTEXT", "BUDGET/DAY", "SPENT", "USE", "ON_EXCEEDED", "RESETS", "STATE"]
        typer.echo(table(headers, rows))
    else:
        typer.echo("no context budgets configured (contexts/<name>.budget in etcd)")


@connected
def alerts(
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 20,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Recent alerts (quota, budget, cooldown, rejected config, etcd), newest first."""
    reply = connection.admin("ListAlerts", admin_pb2.ListAlertsRequest(limit=limit))
    if as_json:
        typer.echo(to_json(reply))
        return
    if not reply.alerts:
        typer.echo("no alerts")
        return
    rows = [
        [
            when(a.created_at),
            admin_pb2.AlertSeverity.Name(a.severity).removeprefix("ALERT_SEVERITY_").lower(),
            a.kind,
            a.subject,
            a.message,
        ]
        for a in reply.alerts
    ]
    typer.echo(table(["RAISED", "SEVERITY", "KIND", "SUBJECT", "MESSAGE"], rows))
