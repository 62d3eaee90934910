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
    tmp_path: Path, server: Running, prefix: str, seed: int, etcd: aetcd.Client
) -> None:
    file = tmp_path / "change.yaml"
    file.write_text(CHANGE)
    at = ("--server", server.address)
    dry = await run_cli("config", "apply", "-f", str(file), "--dry-run", *at, etcd="", prefix="")
    assert dry.returncode == 0, dry.stderr
    assert '+  "model": "gpt-4o"' in dry.stdout and "nothing written" in dry.stdout
    _, stored = await read_prefix(etcd, prefix)
    # The dry run wrote nothing (the revision may move: the server writes runtime keys).
    assert json.loads(stored["contexts/reranker"].value)["model"] == "gpt-4o-mini"
    applied = await run_cli("config", "apply", "-f", str(file), *at, etcd="", prefix="")
    assert applied.returncode == 0, applied.stderr
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["contexts/reranker"].value)["model"] == "gpt-4o"
    again = await run_cli("config", "apply", "-f", str(file), *at, etcd="", prefix="")
    assert "No changes." in again.stdout


async def test_apply_invalid_file_writes_nothing(
    tmp_path: Path, server: Running, prefix: str, seed: int, etcd: aetcd.Client
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(CHANGE + "  rag.answer:\n    model: gpt-5\n")
    at = ("--server", server.address)
    result = await run_cli("config", "apply", "-f", str(file), *at, etcd="", prefix="")
    assert result.returncode == 1
    assert "contexts/rag.answer" in result.stderr and "gpt-5" in result.stderr
    # All or nothing: the valid reranker change was not written either. (No config key
    # under the prefix changed after the seed; the server writes runtime/ keys meanwhile.)
    _, stored = await read_prefix(etcd, prefix)
    config_keys = [v for k, v in stored.items() if not k.startswith("runtime/")]
    assert max(value.mod_revision for value in config_keys) == seed


async def test_validate_and_get(tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int) -> None:
    good = await run_cli(
        "config", "validate", "-f", "config/bootstrap.yaml", etcd=etcd_endpoint, prefix=prefix
    )
    assert good.returncode == 0 and "16 key(s), all valid" in good.stdout
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


async def test_bad_request_error_is_printed_once(server: Running) -> None:
    result = await run_cli("resolve", "", "--server", server.address, etcd="", prefix="")
    assert result.returncode == 1
    assert result.stderr.startswith("INVALID_ARGUMENT: ")
    assert result.stderr.count("1-128 characters") == 1, result.stderr


def override_file(tmp_path: Path, expires: str) -> Path:
    file = tmp_path / "override.yaml"
    file.write_text(
        f"overrides:\n  rag.answer: {{model: gpt-4o, note: test, expires: {expires}}}\n"
    )
    return file


async def resolved_model(server: Running) -> str:
    from modelroute.v1 import router_pb2

    reply = await server.router.ResolveModel(router_pb2.ResolveModelRequest(context="rag.answer"))
    return reply.model_id


async def test_apply_refuses_an_override_that_already_expired(
    tmp_path: Path, server: Running, prefix: str, etcd: aetcd.Client
) -> None:
    at = ("--server", server.address)
    file = override_file(tmp_path, "2020-01-01T00:00:00Z")
    refused = await run_cli("config", "apply", "-f", str(file), *at, etcd="", prefix="")
    assert refused.returncode == 1
    assert "overrides/rag.answer expired at 2020-01-01T00:00:00Z" in refused.stderr
    assert "--force" in refused.stderr
    _, stored = await read_prefix(etcd, prefix)
    assert "overrides/rag.answer" not in stored
    forced = await run_cli("config", "apply", "-f", str(file), "--force", *at, etcd="", prefix="")
    assert forced.returncode == 0, forced.stderr
    assert "expired at 2020-01-01" in forced.stderr  # still said
    _, stored = await read_prefix(etcd, prefix)
    assert "overrides/rag.answer" in stored
    assert await resolved_model(server) == "gemini-3-flash-preview"  # never applies


async def test_relative_expiry_in_a_file_and_on_the_command_line(
    tmp_path: Path, server: Running, prefix: str, etcd: aetcd.Client
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.helpers import eventually

    at = ("--server", server.address)
    applied = await run_cli(
        "config", "apply", "-f", str(override_file(tmp_path, "+1h")), *at, etcd="", prefix=""
    )
    assert applied.returncode == 0, applied.stderr
    _, stored = await read_prefix(etcd, prefix)
    expires = json.loads(stored["overrides/rag.answer"].value)["expires"]
    in_an_hour = datetime.fromisoformat(expires) - datetime.now(UTC)
    assert timedelta(minutes=59) < in_an_hour <= timedelta(hours=1)

    async def serves(model: str) -> None:
        assert await resolved_model(server) == model

    await eventually(lambda: serves("gpt-4o"))
    cleared = await run_cli("override", "clear", "rag.answer", *at, etcd="", prefix="")
    assert cleared.returncode == 0, cleared.stderr
    await eventually(lambda: serves("gemini-3-flash-preview"))

    set_ = await run_cli(
        "override", "set", "rag.answer", "claude-3-sonnet", "--for", "2d", "--note", "incident 7",
        *at, etcd="", prefix="",
    )  # fmt: skip
    assert set_.returncode == 0, set_.stderr
    assert "rag.answer → claude-3-sonnet until " in set_.stdout
    await eventually(lambda: serves("claude-3-sonnet"))
    _, stored = await read_prefix(etcd, prefix)
    value = json.loads(stored["overrides/rag.answer"].value)
    assert value["note"] == "incident 7"
    assert datetime.fromisoformat(value["expires"]) - datetime.now(UTC) > timedelta(days=1)

    bad = await run_cli(
        "override", "set", "rag.answer", "gpt-4o", "--for", "soon", *at, etcd="", prefix=""
    )
    assert bad.returncode == 1 and "not a duration" in bad.stderr
    unknown = await run_cli("override", "set", "rag.answer", "gpt-9", *at, etcd="", prefix="")
    assert unknown.returncode == 1 and "gpt-9" in unknown.stderr
    again = await run_cli("override", "clear", "reranker", *at, etcd="", prefix="")
    assert again.returncode == 1 and "no override for reranker" in again.stderr


async def test_prune_deletes_the_sections_keys_the_file_does_not_list(
    tmp_path: Path, server: Running, etcd_endpoint: str, prefix: str, etcd: aetcd.Client
) -> None:
    file = tmp_path / "providers.yaml"
    file.write_text("providers:\n  google: {requests_per_minute: 10}\n")
    at = ("--server", server.address)
    dry = await run_cli(
        "config", "apply", "-f", str(file), "--prune", "--dry-run", *at,
        etcd=etcd_endpoint, prefix=prefix,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "--- providers/openai (deleted)" in dry.stdout
    assert "--- providers/anthropic (deleted)" in dry.stdout
    assert "3 key(s) would change" in dry.stdout
    _, stored = await read_prefix(etcd, prefix)
    assert "providers/openai" in stored
    pruned = await run_cli(
        "config", "apply", "-f", str(file), "--prune", *at, etcd=etcd_endpoint, prefix=prefix
    )
    assert pruned.returncode == 0, pruned.stderr
    _, stored = await read_prefix(etcd, prefix)
    assert sorted(k for k in stored if k.startswith("providers/")) == ["providers/google"]
    assert "contexts/rag.answer" in stored  # other sections untouched
