"""`modelroute rollout ...`: status of guarded rollouts, promote a finished one, restart.

Registered on the main CLI with `app.add_typer(rollout_app, name="rollout")`; kept in its
own module so that the CLI package split (issue 15) only moves it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
from google.protobuf import json_format
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.api.config_apply import apply_to_etcd
from modelroute.server.core.rollout_spec import PROGRESS_DIR, parse_progress
from modelroute.storage.etcd import (
    DEFAULT_PREFIX,
    EtcdConflictError,
    connect,
    parse_endpoints,
    read_prefix,
)
from modelroute.storage.updates import StoredValue

rollout_app = typer.Typer(help="Guarded progressive rollouts.", no_args_is_help=True)

ServerOpt = Annotated[
    str, typer.Option(envvar="MODELROUTE_SERVER", help="modelroute gRPC address (host:port).")
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
    endpoint_file = Path(os.environ.get("MODELROUTE_DATA_DIR", ".modelroute")) / "etcd.endpoint"
    return endpoint_file.read_text().strip() if endpoint_file.exists() else "127.0.0.1:2379"


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id; omit for all.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status.")] = False,
    server: ServerOpt = "127.0.0.1:50051",
) -> None:
    """Step, share, calls per arm, guardrails with their always-valid intervals, decisions."""
    token = os.environ.get("MODELROUTE_ADMIN_TOKEN", "").strip()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(server) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            reply = stub.GetRolloutStatus(
                admin_pb2.GetRolloutStatusRequest(rollout_id=rollout_id),
                timeout=30,
                metadata=metadata,
            )
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            _fail(f"{error.code().name}: {error.details()}")
    if as_json:
        typer.echo(
            json.dumps(json_format.MessageToDict(reply, preserving_proto_field_name=True), indent=2)
        )
        return
    if not reply.rollouts:
        typer.echo("No rollouts configured.")
    for status in reply.rollouts:
        typer.echo(_describe(status))


def _describe(s: admin_pb2.RolloutStatus) -> str:
    lines = [
        f"{s.rollout_id}: {s.candidate} on {s.context} (baseline {s.baseline_model}) "
        f"{s.state}, step {s.step + 1}/{s.steps}, candidate share {s.percent}%",
        f"  calls: candidate {s.candidate_calls} ({s.step_candidate_calls} in this step), "
        f"baseline {s.baseline_calls}",
    ]
    for g in s.guardrails:
        mark = "BREACHED" if g.breached else "ok"
        lines.append(
            f"  {g.metric} {g.bound}: candidate {g.candidate_value:.4g} vs baseline "
            f"{g.baseline_value:.4g}; excess {g.estimate:+.4g}, 95% always-valid interval "
            f"[{g.interval_low:+.4g}, {g.interval_high:+.4g}] {mark}"
        )
    for d in s.decisions:
        when = d.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
        lines.append(f"  {when} {d.action} -> {d.percent}%: {d.detail}")
    return "\n".join(lines)


def promotion_changes(
    stored: dict[str, StoredValue], rollout_id: str, *, force: bool = False
) -> dict[str, bytes | None]:
    """The config changes that make a finished rollout's candidate the context's model:
    the context serves the candidate (the old model becomes its first fallback) and the
    rollout key is deleted. Raises ValueError with the reason it cannot."""
    key = f"rollouts/{rollout_id}"
    if key not in stored:
        raise ValueError(f"no rollout {rollout_id!r} in etcd")
    rollout = json.loads(stored[key].value)
    progress_raw = stored.get(PROGRESS_DIR + rollout_id)
    state = parse_progress(progress_raw.value).state if progress_raw else "PENDING"
    if state != "COMPLETED" and not force:
        raise ValueError(
            f"rollout {rollout_id} is {state}, not COMPLETED; wait for it to finish "
            "(or --force to promote anyway)"
        )
    context_key = f"contexts/{rollout['context']}"
    context: dict[str, Any] = json.loads(stored[context_key].value)
    candidate, previous = rollout["candidate"], context.get("model", "")
    fallbacks = [m for m in context.get("fallbacks", []) if m != candidate]
    if previous and previous != candidate and previous not in fallbacks:
        fallbacks.insert(0, previous)
    context |= {"model": candidate, "fallbacks": fallbacks}
    return {context_key: json.dumps(context).encode(), key: None}


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: Annotated[str, typer.Argument(help="A COMPLETED rollout.")],
    force: Annotated[bool, typer.Option(help="Promote even if not COMPLETED.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show the change only.")] = False,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Make the rollout's candidate the context's model and remove the rollout (one guarded
    transaction: a concurrent change fails it, nothing half-written)."""

    async def run() -> tuple[list[str], int]:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            revision, stored = await read_prefix(client, etcd_prefix)
            changes = promotion_changes(stored, rollout_id, force=force)
            plan, written = await apply_to_etcd(
                client, etcd_prefix, changes, expected_revision=revision, dry_run=dry_run
            )
            if not plan.ok:
                raise ValueError("; ".join(f"{r.key}: {r.error}" for r in plan.rejections))
            return plan.diff, written
        finally:
            await client.close()

    try:
        diff, revision = asyncio.run(run())
    except ValueError as exc:
        _fail(str(exc))
    except EtcdConflictError as exc:
        _fail(f"conflict: {exc}", code=3)
    for line in diff:
        typer.echo(line)
    if dry_run:
        typer.echo("Dry run: nothing written.")
    else:
        typer.echo(f"Promoted rollout {rollout_id} at revision {revision}.")


@rollout_app.command("restart")
def rollout_restart(
    rollout_id: Annotated[str, typer.Argument(help="A rolled-back or paused rollout.")],
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Forget the controller's progress: the rollout starts again from its first step."""

    async def run() -> bool:
        client = connect(parse_endpoints(_etcd_endpoints(etcd_endpoints)))
        try:
            result = await client.delete(f"{etcd_prefix}{PROGRESS_DIR}{rollout_id}".encode())
            return bool(result and result.deleted)
        finally:
            await client.close()

    if asyncio.run(run()):
        typer.echo(f"Rollout {rollout_id} restarts from its first step at the next check.")
    else:
        typer.echo(f"Rollout {rollout_id} had no progress; it starts at the next check.")
