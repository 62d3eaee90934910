"""The operator CLI against a real etcd and server, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.etcd import read_prefix, write_changes

from tests.helpers import Running, run_cli

CHANGE = "contexts:\n  reranker:\n    model: gpt-4o\n    fallbacks: [gpt-4o-mini]\n"


async def test_apply_dry_run_then_apply(
    tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int, etcd: aetcd.Client
) -> None:
    file = tmp_path / "change.yaml"
    file.write_text(CHANGE)
    dry = await run_cli(
        "config", "apply", "-f", str(file), "--dry-run", etcd=etcd_endpoint, prefix=prefix
    )
    assert dry.returncode == 0, dry.stderr
    assert '+  "model": "gpt-4o"' in dry.stdout and "nothing written" in dry.stdout
    revision, stored = await read_prefix(etcd, prefix)
    assert revision == seed  # dry run wrote nothing
    applied = await run_cli("config", "apply", "-f", str(file), etcd=etcd_endpoint, prefix=prefix)
    assert applied.returncode == 0, applied.stderr
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["contexts/reranker"].value)["model"] == "gpt-4o"
    again = await run_cli("config", "apply", "-f", str(file), etcd=etcd_endpoint, prefix=prefix)
    assert "No changes." in again.stdout


async def test_apply_invalid_file_writes_nothing(
    tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int, etcd: aetcd.Client
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(CHANGE + "  rag.answer:\n    model: gpt-5\n")
    result = await run_cli("config", "apply", "-f", str(file), etcd=etcd_endpoint, prefix=prefix)
    assert result.returncode == 1
    assert "contexts/rag.answer" in result.stderr and "gpt-5" in result.stderr
    # All or nothing: the valid reranker change was not written either. (Nothing under the
    # prefix changed after the seed; etcd's global revision may move meanwhile, as other
    # tests' leased runtime keys expire in the shared etcd.)
    _, stored = await read_prefix(etcd, prefix)
    assert max(value.mod_revision for value in stored.values()) == seed


async def test_validate_and_get(tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int) -> None:
    good = await run_cli(
        "config", "validate", "-f", "config/bootstrap.yaml", etcd=etcd_endpoint, prefix=prefix
    )
    assert good.returncode == 0 and "15 key(s), all valid" in good.stdout
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(
        "experiments:\n  e:\n    context: x\n    variants: [{id: a, model: m, weight: 50}]\n"
    )
    bad = await run_cli(
        "config", "validate", "-f", str(bad_file), etcd=etcd_endpoint, prefix=prefix
    )
    assert bad.returncode == 1 and "sum to 50" in bad.stderr
    got = await run_cli("config", "get", "contexts/rag.answer", etcd=etcd_endpoint, prefix=prefix)
    value = json.loads(got.stdout)
    # The read's etcd revision: at least the seed's. The etcd is shared by the whole session,
    # so leases of other tests' runtime keys expiring can move it past the seed meanwhile.
    assert value["revision"] >= seed
    assert value["values"]["contexts/rag.answer"]["model"] == "gemini-3-flash-preview"


async def test_resolve_and_status_commands(
    server: Running, etcd_endpoint: str, prefix: str
) -> None:
    resolved = await run_cli(
        "resolve",
        "premium.answer",
        "--user",
        "7",
        "--tier",
        "premium",
        "--server",
        server.address,
        etcd=etcd_endpoint,
        prefix=prefix,
    )
    assert resolved.returncode == 0, resolved.stderr
    decision = json.loads(resolved.stdout)
    assert (decision["model_id"], decision["reason"]) == (
        "gemini-3-pro-preview",
        "REASON_CONTEXT_DEFAULT",
    )
    status = await run_cli(
        "config", "status", "--server", server.address, etcd=etcd_endpoint, prefix=prefix
    )
    assert status.returncode == 0 and json.loads(status.stdout)["etcd_connected"] is True


async def test_apply_config_rpc_detects_concurrent_change(
    server: Running, etcd: aetcd.Client, prefix: str, seed: int
) -> None:
    change = admin_pb2.KeyChange(key="contexts/reranker", value_json='{"model": "gpt-4o"}')
    # Somebody else changes a context after the operator read revision `seed`.
    await write_changes(etcd, prefix, {"contexts/template_gates": b'{"model": "gpt-4o"}'}, 0, [])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.admin.ApplyConfig(
            admin_pb2.ApplyConfigRequest(changes=[change], expected_revision=seed)
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "changed after revision" in (caught.value.details() or "")
    reply = await server.admin.ApplyConfig(admin_pb2.ApplyConfigRequest(changes=[change]))
    assert reply.changed_keys == 1 and reply.revision > seed
    bad = admin_pb2.KeyChange(key="contexts/reranker", value_json='{"model": "nope"}')
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.admin.ApplyConfig(admin_pb2.ApplyConfigRequest(changes=[bad]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
