"""`modelroute usage` and `modelroute experiments`: analysis of reported usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2

from .connection import Connection, connected
from .output import failure, ms, p_value, table, to_json, usd

experiments_app = typer.Typer(help="A/B experiments.", no_args_is_help=True)

FromOpt = Annotated[
    str | None, typer.Option("--from", help="Start (ISO, inclusive; UTC if no offset).")
]
ToOpt = Annotated[str | None, typer.Option("--to", help="End (ISO, exclusive).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the RPC's JSON instead of a table.")]


def timestamp_arg(value: str | None, name: str) -> timestamp_pb2.Timestamp | None:
    """`--from`/`--to` as a Timestamp (UTC when the text has no offset); exits if unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise failure(
            f"--{name}: expected an ISO date or time, e.g. 2026-11-01 or 2026-11-01T12:00Z"
        ) from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return stamp


@connected
def usage(
    by: Annotated[str, typer.Option(help="model, context, provider or day.")] = "model",
    from_: FromOpt = None,
    to: ToOpt = None,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Calls, errors, tokens, cost and latency from reported usage."""
    group = getattr(admin_pb2, f"USAGE_GROUP_BY_{by.upper()}", None)
    if group is None or by.upper() == "UNSPECIFIED":
        raise failure("--by must be model, context, provider or day")
    request = admin_pb2.GetUsageSummaryRequest(group_by=group)
    if (since := timestamp_arg(from_, "from")) is not None:
        request.from_time.CopyFrom(since)
    if (until := timestamp_arg(to, "to")) is not None:
        request.to_time.CopyFrom(until)
    reply = connection.admin("GetUsageSummary", request)
    if as_json:
        typer.echo(to_json(reply))
        return
    if not reply.rows:
        typer.echo("no usage in this range (apps report calls with ReportUsage)")
        return
    headers = [by.upper(), "CALLS", "ERRORS", "ERR%", "IN_TOK", "OUT_TOK", "COST_USD"]
    headers += ["USD/CALL", "P50_MS", "P95_MS", "P99_MS"]
    rows = [
        [
            r.key,
            str(r.calls),
            str(r.errors),
            f"{100 * r.error_rate:.2f}",
            str(r.input_tokens),
            str(r.output_tokens),
            usd(r.cost_usd),
            usd(r.cost_per_call_usd),
            ms(r.latency_p50_ms),
            ms(r.latency_p95_ms),
            ms(r.latency_p99_ms),
        ]
        for r in reply.rows
    ]
    typer.echo(table(headers, rows))


@experiments_app.command("results")
@connected
def experiments_results(
    experiment_id: Annotated[str, typer.Argument(help="The experiments/<id> key.")],
    from_: FromOpt = None,
    to: ToOpt = None,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Each variant against the control: rates, latency, cost, quality, p-values, SRM."""
    request = admin_pb2.GetExperimentResultsRequest(experiment_id=experiment_id)
    if (since := timestamp_arg(from_, "from")) is not None:
        request.from_time.CopyFrom(since)
    if (until := timestamp_arg(to, "to")) is not None:
        request.to_time.CopyFrom(until)
    reply = connection.admin("GetExperimentResults", request)
    if as_json:
        typer.echo(to_json(reply))
        return
    typer.echo(f"experiment {reply.experiment_id} on {reply.context} (bucket by {reply.bucket_by})")
    headers = ["VARIANT", "MODEL", "WEIGHT", "UNITS", "CALLS", "ERR%", "ERR_EFFECT", "ERR_P"]
    headers += ["P95_MS", "LAT_EFFECT", "LAT_P", "USD/CALL", "QUALITY", "QUALITY_95CI"]
    headers += ["THUMBS_UP%", "SIGNIFICANT"]
    rows = []
    for index, v in enumerate(reply.variants):
        control = index == 0
        rows.append(
            [
                v.variant_id + (" (control)" if control else ""),
                v.model_id,
                str(v.weight),
                str(v.assignments),
                str(v.usage.calls),
                f"{100 * v.error_rate:.2f}",
                "-" if control else f"{100 * v.error_rate_effect:+.2f}",
                "-" if control else p_value(v.error_rate_p_value),
                ms(v.usage.latency_p95_ms),
                "-" if control else f"{v.latency_effect_ms:+.0f}",
                "-" if control else p_value(v.latency_p_value),
                usd(v.usage.cost_per_call_usd),
                f"{v.mean_quality_score:.3f}" if v.quality_scores else "-",
                f"[{v.quality_ci_low:.3f}, {v.quality_ci_high:.3f}]" if v.quality_scores else "-",
                f"{100 * v.thumbs_up_rate:.1f}" if v.thumbs else "-",
                "-" if control else ("YES" if v.significant else "no"),
            ]
        )
    typer.echo(table(headers, rows))
    verdict = "MISMATCH - check assignment" if reply.sample_ratio_mismatch else "ok"
    typer.echo(f"sample ratio: p={p_value(reply.sample_ratio_p_value)} {verdict}")
