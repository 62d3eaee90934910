"""`modelroute`: run the service and operate it (typer)."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
from google.protobuf import json_format
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.api import cli_history
from modelroute.server.api.config_apply import (
    ConfigFileError,
    Plan,
    apply_to_etcd,
    load_config_file,
    validate_standalone,
)
from modelroute.server.api.errors import decode_details
from modelroute.server.runtime.change_meta import ACTOR_OPERATOR
from modelroute.storage.etcd import (
    DEFAULT_PREFIX,
    EtcdConflictError,
    connect,
    parse_endpoints,
    read_prefix,
)
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

app = typer.Typer(
    help="modelroute: decide which LLM model every request uses.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect and change the configuration in etcd.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
cooldown_app = typer.Typer(help="Models and providers cooling down.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cooldown_app, name="cooldown")
cli_history.register(config_app)

DATA_DIR = Path(os.environ.get("MODELROUTE_DATA_DIR", ".modelroute"))
ServerOpt = Annotated[
    str,
    typer.Option(envvar="MODELROUTE_SERVER", help="modelroute gRPC address (host:port)."),
]
EtcdOpt = Annotated[
    str | None,
    typer.Option(
        envvar="MODELROUTE_ETCD_ENDPOINTS",
        help="etcd endpoints, comma-separated. Default: the embedded etcd of `serve`.",
    ),
]
PrefixOpt = Annotated[str, typer.Option(envvar="MODELROUTE_ETCD_PREFIX", help="Key prefix.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _etcd_endpoints(given: str | None) -> str:
    if given:
        return given
    endpoint_file = DATA_DIR / "etcd.endpoint"
    if endpoint_file.exists():
        return endpoint_file.read_text().strip()
    return "127.0.0.1:2379"


def _admin_metadata() -> list[tuple[str, str]]:
    """`authorization` for admin calls when MODELROUTE_ADMIN_TOKEN is set."""
    token = os.environ.get("MODELROUTE_ADMIN_TOKEN", "").strip()
    return [("authorization", f"Bearer {token}")] if token else []


def _app_metadata() -> list[tuple[str, str]]:
    """`x-api-key` for application calls when MODELROUTE_API_KEY is set."""
    key = os.environ.get("MODELROUTE_API_KEY", "").strip()
    return [("x-api-key", key)] if key else []


def _rpc_error(error: grpc.RpcError) -> NoReturn:
    assert isinstance(error, grpc.Call)
    lines = [f"{error.code().name}: {error.details()}"]
    for name, detail in decode_details(error).items():
        if name == "BadRequest":
            lines += [f"  {v.field}: {v.description}" for v in detail.field_violations]  # type: ignore[attr-defined]
        elif name == "RetryInfo":
            lines.append(f"  retry after {detail.retry_delay.ToTimedelta()}")  # type: ignore[attr-defined]
    _fail("\n".join(lines))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 50051,
    etcd_endpoints: Annotated[
        str | None,
        typer.Option(envvar="MODELROUTE_ETCD_ENDPOINTS", help="etcd cluster; omit for embedded."),
    ] = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    etcd_username: Annotated[str | None, typer.Option(envvar="MODELROUTE_ETCD_USERNAME")] = None,
    etcd_password: Annotated[str | None, typer.Option(envvar="MODELROUTE_ETCD_PASSWORD")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MODELROUTE_DATABASE_URL", help="SQLAlchemy URL; omit for SQLite."),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Embedded etcd + SQLite location.")] = DATA_DIR,
    bootstrap: Annotated[Path | None, typer.Option(help="Seed config for an empty prefix.")] = None,
    seed: Annotated[
        bool | None, typer.Option(help="Seed an empty external etcd prefix from --bootstrap.")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="MODELROUTE_LOG_LEVEL")] = "INFO",
    # Security (docs/security.md). Admin tokens themselves only come from the environment
    # (MODELROUTE_ADMIN_TOKENS) or a file, never argv, which `ps` shows to every user.
    admin_token_file: Annotated[
        Path | None,
        typer.Option(envvar="MODELROUTE_ADMIN_TOKEN_FILE", help="Admin tokens, one per line."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_TLS_CERT", help="Server certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_TLS_KEY", help="Server private key (PEM).")
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(envvar="MODELROUTE_TLS_CLIENT_CA", help="Require client certs (mTLS)."),
    ] = None,
    etcd_ca: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_CA", help="CA of etcd's certificate.")
    ] = None,
    etcd_cert: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_CERT", help="etcd client cert.")
    ] = None,
    etcd_key: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_KEY", help="etcd client key.")
    ] = None,
    admin_port: Annotated[
        int, typer.Option(help="Admin HTTP API + dashboard + /metrics (0: any, -1: off).")
    ] = 8081,
) -> None:
    """Run a replica: gRPC API, config hot reload from etcd, usage logging."""
    from modelroute.server.api.auth import AdminTokenFileError
    from modelroute.server.api.tls import TlsConfigError
    from modelroute.server.app import DEFAULT_BOOTSTRAP, ServeOptions, serve_until_signalled
    from modelroute.storage.data_dir_lock import AlreadyRunningError

    # `kill -USR1 <pid>` prints every thread's stack: the first tool for a stuck replica.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServeOptions(
        host=host,
        port=port,
        etcd_endpoints=etcd_endpoints,
        etcd_prefix=etcd_prefix,
        etcd_username=etcd_username,
        etcd_password=etcd_password,
        database_url=database_url,
        data_dir=data_dir,
        bootstrap=bootstrap or DEFAULT_BOOTSTRAP,
        seed=seed,
        admin_token_file=admin_token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        etcd_ca=etcd_ca,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        admin_port=None if admin_port < 0 else admin_port,
    )
    try:
        options.etcd_tls()  # validates the etcd TLS combination before anything starts
    except ValueError as exc:
        _fail(f"cannot start: {exc}", code=2)
    try:
        asyncio.run(serve_until_signalled(options))
    except AlreadyRunningError as exc:
        _fail(str(exc), code=3)
    except (TlsConfigError, AdminTokenFileError) as exc:
        _fail(f"cannot start: {exc}", code=2)


@app.command()
def resolve(
    context: Annotated[str, typer.Argument(help="The call site, e.g. rag.answer.")],
    user: Annotated[str, typer.Option(help="User id.")] = "",
    tier: Annotated[str, typer.Option(help="User tier, e.g. free or premium.")] = "",
    exclude: Annotated[list[str] | None, typer.Option(help="Model to skip (repeatable).")] = None,
    server: ServerOpt = "127.0.0.1:50051",
) -> None:
    """Ask the server which model it would use, and why (JSON)."""
    request = router_pb2.ResolveModelRequest(
        context=context, user=types_pb2.User(id=user, tier=tier), exclude_models=exclude or []
    )
    with grpc.insecure_channel(server) as channel:
        try:
            response = router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(
                request, timeout=10, metadata=_app_metadata()
            )
        except grpc.RpcError as error:
            _rpc_error(error)
    typer.echo(_to_json(response))


def _to_json(message: Any) -> str:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2
    )


def _print_plan(plan: Plan) -> None:
    if not plan.changes:
        typer.echo("No changes.")
    for line in plan.diff:
        color = {"+": typer.colors.GREEN, "-": typer.colors.RED}.get(line[:1])
        typer.secho(line, fg=typer.colors.CYAN if line.startswith("---") else color)


def _print_rejections(rejections: list[Any]) -> None:
    typer.secho(f"{len(rejections)} invalid value(s); nothing written:", fg="red", err=True)
    for rejection in rejections:
        typer.secho(f"  {rejection.key}: {rejection.error}", fg="red", err=True)


@config_app.command("apply")
def config_apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="YAML file (see config/).")],
    dry_run: Annotated[bool, typer.Option(help="Validate and show the diff only.")] = False,
    prune: Annotated[
        bool, typer.Option(help="Delete keys of the file's sections that it does not list.")
    ] = False,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    note: cli_history.NoteOpt = "",
    server: Annotated[
        str | None,
        typer.Option(
            envvar="MODELROUTE_SERVER",
            help="Apply through this server (ApplyConfig): the history records your admin "
            "token's name. Without it the file goes straight to etcd as `operator`.",
        ),
    ] = None,
    impact: Annotated[
        bool, typer.Option(help="Replay recorded traffic under the change; write nothing.")
    ] = False,
    window: Annotated[str, typer.Option(help="Traffic replayed by --impact.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="--impact: print JSON.")] = False,
) -> None:
    """Validate, diff and write a config file in one guarded etcd transaction."""
    try:
        values = load_config_file(file)
    except ConfigFileError as exc:
        _fail(str(exc))
    if impact:
        return cli_history.print_impact(server or "127.0.0.1:50051", values, window, as_json)
    if server:
        if prune:
            _fail("--prune writes straight to etcd: use it without --server")
        return cli_history.apply_through_server(server, values, note=note, dry_run=dry_run)

    async def run() -> tuple[Plan, int]:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            return await apply_to_etcd(
                client,
                etcd_prefix,
                dict(values),
                prune=prune,
                dry_run=dry_run,
                actor=ACTOR_OPERATOR,
                note=note,
            )
        finally:
            await client.close()

    try:
        plan, revision = asyncio.run(run())
    except EtcdConflictError as exc:
        _fail(f"conflict: {exc}", code=3)
    except Exception as exc:  # noqa: BLE001 - connection problems: say so plainly
        _fail(f"cannot reach etcd at {_etcd_endpoints(etcd_endpoints)}: {exc}", code=2)
    _print_plan(plan)
    if not plan.ok:
        _print_rejections(plan.rejections)
        raise typer.Exit(1)
    if dry_run:
        typer.echo(f"Dry run: {len(plan.changes)} key(s) would change; nothing written.")
    elif plan.changes:
        typer.echo(f"Applied {len(plan.changes)} key(s) at revision {revision}.")


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Option("-f", "--file", help="YAML file to check.")],
) -> None:
    """Check a config file on its own (no etcd needed)."""
    try:
        values = load_config_file(file)
    except ConfigFileError as exc:
        _fail(str(exc))
    rejections = validate_standalone(values)
    if rejections:
        _print_rejections(rejections)
        raise typer.Exit(1)
    typer.echo(f"{file}: {len(values)} key(s), all valid.")


@config_app.command("get")
def config_get(
    key: Annotated[
        str | None, typer.Argument(help="Relative key, e.g. contexts/rag.answer.")
    ] = None,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print values stored in etcd (all, one key, or a section like `models/`)."""

    async def run() -> tuple[int, dict[str, bytes]]:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            revision, stored = await read_prefix(client, etcd_prefix)
        finally:
            await client.close()
        return revision, {k: v.value for k, v in stored.items()}

    try:
        revision, values = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot reach etcd at {_etcd_endpoints(etcd_endpoints)}: {exc}", code=2)
    selected = {k: v for k, v in values.items() if key is None or k == key or k.startswith(key)}
    if key and not selected:
        _fail(f"no key {etcd_prefix}{key}")
    out: dict[str, Any] = {}
    for name, raw in sorted(selected.items()):
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw.decode(errors="replace")
    typer.echo(json.dumps({"revision": revision, "values": out}, indent=2))


def _admin_call(server: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(server) as channel:
        try:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return getattr(stub, method)(request, timeout=10, metadata=_admin_metadata())
        except grpc.RpcError as error:
            _rpc_error(error)


@config_app.command("status")
def config_status(server: ServerOpt = "127.0.0.1:50051") -> None:
    """What the server serves: revision, rejected values, env overrides, etcd state."""
    status = _admin_call(server, "GetConfigStatus", admin_pb2.GetConfigStatusRequest())
    typer.echo(_to_json(status))
    if status.rejected_keys:
        sys.exit(4)  # scripts can alert on rejected values


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _when(stamp: Any) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if stamp.seconds else "-"


@app.command()
def quotas(
    server: ServerOpt = "127.0.0.1:50051",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Provider limits and context budgets, summed over every live replica."""
    status = _admin_call(server, "GetConfigStatus", admin_pb2.GetConfigStatusRequest())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "live_replicas": status.live_replicas,
                    "quotas": [json_format.MessageToDict(q, True) for q in status.quotas],
                    "budgets": [json_format.MessageToDict(b, True) for b in status.budgets],
                },
                indent=2,
            )
        )
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
                _when(q.reset_at),
                "EXCEEDED" if q.is_exceeded else "ok",
            ]
            for q in status.quotas
        ]
        headers = ["PROVIDER", "LIMIT", "VALUE", "USED", "REMAINING", "USE", "RESETS", "STATE"]
        typer.echo(_table(headers, rows))
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
                _when(b.reset_at),
                "EXCEEDED" if b.is_exceeded else "ok",
            ]
            for b in status.budgets
        ]
        headers = ["CONTEXT", "BUDGET/DAY", "SPENT", "USE", "ON_EXCEEDED", "RESETS", "STATE"]
        typer.echo(_table(headers, rows))
    else:
        typer.echo("no context budgets configured (contexts/<name>.budget in etcd)")


@app.command()
def alerts(
    server: ServerOpt = "127.0.0.1:50051",
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Recent alerts (quota, budget, cooldown, rejected config, etcd), newest first."""
    reply = _admin_call(server, "ListAlerts", admin_pb2.ListAlertsRequest(limit=limit))
    if as_json:
        typer.echo(_to_json(reply))
        return
    if not reply.alerts:
        typer.echo("no alerts")
        return
    rows = [
        [
            _when(a.created_at),
            admin_pb2.AlertSeverity.Name(a.severity).removeprefix("ALERT_SEVERITY_").lower(),
            a.kind,
            a.subject,
            a.message,
        ]
        for a in reply.alerts
    ]
    typer.echo(_table(["RAISED", "SEVERITY", "KIND", "SUBJECT", "MESSAGE"], rows))


def _timestamp_arg(value: str | None, name: str) -> Any:
    from datetime import UTC, datetime

    from google.protobuf import timestamp_pb2

    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--{name}: expected an ISO date or time, e.g. 2026-11-01 or 2026-11-01T12:00Z")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return stamp


FromOpt = Annotated[
    str | None, typer.Option("--from", help="Start (ISO, inclusive; UTC if no offset).")
]
ToOpt = Annotated[str | None, typer.Option("--to", help="End (ISO, exclusive).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the RPC's JSON instead of a table.")]


def _ms(value: float) -> str:
    return f"{value:.0f}"


def _usd(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.2f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


@app.command()
def usage(
    by: Annotated[str, typer.Option(help="model, context, provider or day.")] = "model",
    from_: FromOpt = None,
    to: ToOpt = None,
    server: ServerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
) -> None:
    """Calls, errors, tokens, cost and latency from reported usage."""
    group = getattr(admin_pb2, f"USAGE_GROUP_BY_{by.upper()}", None)
    if group is None or by.upper() == "UNSPECIFIED":
        _fail("--by must be model, context, provider or day")
    request = admin_pb2.GetUsageSummaryRequest(group_by=group)
    if (since := _timestamp_arg(from_, "from")) is not None:
        request.from_time.CopyFrom(since)
    if (until := _timestamp_arg(to, "to")) is not None:
        request.to_time.CopyFrom(until)
    reply = _admin_call(server, "GetUsageSummary", request)
    if as_json:
        typer.echo(_to_json(reply))
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
            _usd(r.cost_usd),
            _usd(r.cost_per_call_usd),
            _ms(r.latency_p50_ms),
            _ms(r.latency_p95_ms),
            _ms(r.latency_p99_ms),
        ]
        for r in reply.rows
    ]
    typer.echo(_table(headers, rows))


experiments_app = typer.Typer(help="A/B experiments.", no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")


@experiments_app.command("results")
def experiments_results(
    experiment_id: Annotated[str, typer.Argument(help="The experiments/<id> key.")],
    from_: FromOpt = None,
    to: ToOpt = None,
    server: ServerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
) -> None:
    """Each variant against the control: rates, latency, cost, quality, p-values, SRM."""
    request = admin_pb2.GetExperimentResultsRequest(experiment_id=experiment_id)
    if (since := _timestamp_arg(from_, "from")) is not None:
        request.from_time.CopyFrom(since)
    if (until := _timestamp_arg(to, "to")) is not None:
        request.to_time.CopyFrom(until)
    reply = _admin_call(server, "GetExperimentResults", request)
    if as_json:
        typer.echo(_to_json(reply))
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
                "-" if control else _p(v.error_rate_p_value),
                _ms(v.usage.latency_p95_ms),
                "-" if control else f"{v.latency_effect_ms:+.0f}",
                "-" if control else _p(v.latency_p_value),
                _usd(v.usage.cost_per_call_usd),
                f"{v.mean_quality_score:.3f}" if v.quality_scores else "-",
                f"[{v.quality_ci_low:.3f}, {v.quality_ci_high:.3f}]" if v.quality_scores else "-",
                f"{100 * v.thumbs_up_rate:.1f}" if v.thumbs else "-",
                "-" if control else ("YES" if v.significant else "no"),
            ]
        )
    typer.echo(_table(headers, rows))
    verdict = "MISMATCH - check assignment" if reply.sample_ratio_mismatch else "ok"
    typer.echo(f"sample ratio: p={_p(reply.sample_ratio_p_value)} {verdict}")


@cooldown_app.command("list")
def cooldown_list(etcd_endpoints: EtcdOpt = None, etcd_prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
    """Active cooldowns (shared by every replica), as JSON."""
    from modelroute.server.runtime.keys import COOLDOWN_DIR

    async def run() -> dict[str, Any]:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            _, stored = await read_prefix(client, etcd_prefix + COOLDOWN_DIR)
        finally:
            await client.close()
        return {subject: json.loads(value.value) for subject, value in sorted(stored.items())}

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot reach etcd at {_etcd_endpoints(etcd_endpoints)}: {exc}", code=2)


@cooldown_app.command("clear")
def cooldown_clear(
    subject: Annotated[str, typer.Argument(help="A model id, or provider:<name>.")],
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """End a cooldown now, on every replica."""
    from modelroute.server.runtime.runtime_state import clear_cooldown
    from modelroute.storage.runtime_store import EtcdRuntimeStore

    key = (
        f"providers/{subject.removeprefix('provider:')}"
        if subject.startswith("provider:")
        else f"models/{subject}"
    )

    async def run() -> bool:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            return await clear_cooldown(EtcdRuntimeStore(client, etcd_prefix), key)
        finally:
            await client.close()

    if not asyncio.run(run()):
        _fail(f"no active cooldown for {key}")
    typer.echo(f"cleared cooldown for {key}")


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None, typer.Option(envvar="MODELROUTE_DATABASE_URL", help="Default: SQLite.")
    ] = None,
) -> None:
    """Apply database migrations up to the latest schema."""
    from modelroute.storage.database import default_sqlite_url, upgrade

    url = database_url or default_sqlite_url(DATA_DIR)
    upgrade(url)
    typer.echo(f"database at {url.split('@')[-1]} is up to date")


# `modelroute rollout ...` lives in its own module (guarded rollouts, issue 12).
from modelroute.server.api.rollout_cli import rollout_app  # noqa: E402

app.add_typer(rollout_app, name="rollout")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
