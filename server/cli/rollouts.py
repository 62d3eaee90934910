"""`modelroute rollout ...`: status of guarded rollouts, promote a finished one, restart.

Status and the promotion's write go through AdminService (GetRolloutStatus, ApplyConfig);
reading the controller's progress and restarting it touch its runtime key in the etcd found
by the discovery rule (no RPC offers them yet).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.etcd import EtcdClient, read_prefix
from modelroute.storage.runtime_store import EtcdRuntimeStore
from modelroute.storage.updates import StoredValue

from ..core.rollout_spec import PROGRESS_DIR, parse_progress
from .config import apply_changes
from .connection import Connection, connected
from .etcd_access import (
    DataDirOpt,
    EtcdOpt,
    PrefixOpt,
    locate_etcd,
    with_etcd,
)
from .output import failure, print_diff, to_json

rollout_app = typer.Typer(help="Guarded progressive rollouts.", no_args_is_help=True)


@rollout_app.command("status")
@connected
def rollout_status(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id; omit for all.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status.")] = False,
    *,
    connection: Connection,
) -> None:
    """Step, share, calls per arm, guardrails with their always-valid intervals, decisions."""
    request = admin_pb2.GetRolloutStatusRequest(rollout_id=rollout_id)
    reply = connection.admin("GetRolloutStatus", request, timeout=30)
    if as_json:
        typer.echo(to_json(reply))
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
@connected
def rollout_promote(
    rollout_id: Annotated[str, typer.Argument(help="A COMPLETED rollout.")],
    force: Annotated[bool, typer.Option(help="Promote even if not COMPLETED.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show the change only.")] = False,
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = None,
    *,
    connection: Connection,
) -> None:
    """Make the rollout's candidate the context's model and remove the rollout (one guarded
    transaction: a concurrent change fails it, nothing half-written)."""
    location = locate_etcd(etcd_endpoints, etcd_prefix, connection.data_dir)

    async def read(client: EtcdClient) -> tuple[int, dict[str, StoredValue]]:
        return await read_prefix(client, location.prefix)

    revision, stored = with_etcd(location, read)
    try:
        changes = promotion_changes(stored, rollout_id, force=force)
    except ValueError as exc:
        raise failure(str(exc)) from None
    # Guarded on the revision the progress was read at: a change since fails it (exit 3).
    reply = apply_changes(connection, changes, expected_revision=revision, dry_run=dry_run)
    print_diff(list(reply.diff))
    if dry_run:
        typer.echo("Dry run: nothing written.")
    else:
        typer.echo(f"Promoted rollout {rollout_id} at revision {reply.revision}.")


@rollout_app.command("restart")
def rollout_restart(
    rollout_id: Annotated[str, typer.Argument(help="A rolled-back or paused rollout.")],
    etcd_endpoints: EtcdOpt = None,
    etcd_prefix: PrefixOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Forget the controller's progress: the rollout starts again from its first step."""
    location = locate_etcd(etcd_endpoints, etcd_prefix, data_dir)

    async def forget(client: EtcdClient) -> bool:
        return await EtcdRuntimeStore(client, location.prefix).delete(PROGRESS_DIR + rollout_id)

    if with_etcd(location, forget):
        typer.echo(f"Rollout {rollout_id} restarts from its first step at the next check.")
    else:
        typer.echo(f"Rollout {rollout_id} had no progress; it starts at the next check.")
