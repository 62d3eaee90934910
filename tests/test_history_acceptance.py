"""Issue 12 acceptance, history part: two real `modelroute serve` processes on one etcd
and one database; etcdctl and the `modelroute` CLI as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.storage.etcd import read_prefix
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import ServerProcess, eventually

TOKEN = "alice-secret"
AUTH = [("authorization", f"Bearer {TOKEN}")]
ETCDCTL = str(Path(sys.executable).parent / "etcdctl")


class Replica:
    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.router = router_pb2_grpc.ModelRouterServiceStub(self.channel)
        self.address = f"127.0.0.1:{process.port}"

    async def model(self, context: str = "rag.answer") -> str:
        reply = await self.router.ResolveModel(
            router_pb2.ResolveModelRequest(context=context, user=types_pb2.User(id="u1"))
        )
        return reply.model_id

    async def changes(self, key_prefix: str = "") -> list[admin_pb2.ConfigChange]:
        reply = await self.admin.ListConfigChanges(
            admin_pb2.ListConfigChangesRequest(key_prefix=key_prefix, limit=1000), metadata=AUTH
        )
        return list(reply.changes)


@pytest.fixture
async def replicas(
    seed: int, etcd_endpoint: str, prefix: str, tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("alice:alice-secret\n")

    def start(index: int) -> ServerProcess:
        return ServerProcess(
            [
                "--etcd-endpoints",
                etcd_endpoint,
                "--etcd-prefix",
                prefix,
                "--database-url",
                database_url,
                "--data-dir",
                str(tmp_path / f"replica{index}"),
                "--admin-token-file",
                str(tokens),
            ]
        )

    processes = [await asyncio.to_thread(start, i) for i in range(2)]
    started = [Replica(p) for p in processes]
    yield started[0], started[1]
    for replica in started:
        await replica.channel.close()
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


def cli(*args: str, server: str, etcd: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelroute.server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "MODELROUTE_SERVER": server,
            "MODELROUTE_ADMIN_TOKEN": TOKEN,
            "MODELROUTE_ETCD_ENDPOINTS": etcd,
            "MODELROUTE_ETCD_PREFIX": prefix,
            "PATH": "/usr/bin:/bin",
        },
    )


def etcdctl(*args: str, etcd: str) -> None:
    subprocess.run([ETCDCTL, "--endpoints", etcd, *args], check=True, capture_output=True)


async def test_etcdctl_and_cli_writes_recorded_once_then_rollback_on_both_replicas(
    replicas: tuple[Replica, Replica],
    etcd_endpoint: str,
    prefix: str,
    tmp_path: Path,
    etcd: aetcd.Client,
) -> None:
    first, second = replicas
    original = await first.model()
    good, _ = await read_prefix(etcd, prefix)
    override = json.dumps({"model": "gpt-4o", "note": "incident 7"})
    await asyncio.to_thread(
        etcdctl, "put", f"{prefix}overrides/rag.answer", override, etcd=etcd_endpoint
    )
    change = tmp_path / "change.yaml"
    change.write_text("contexts:\n  reranker:\n    model: gpt-4o\n    fallbacks: [gpt-4o-mini]\n")
    applied = await asyncio.to_thread(
        cli,
        "config", "apply", "-f", str(change), "--note", "bigger reranker",
        server=first.address, etcd=etcd_endpoint, prefix=prefix,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    await eventually(lambda: _both(first, second, "gpt-4o"))

    async def recorded() -> list[admin_pb2.ConfigChange]:
        changes = [c for c in await second.changes() if c.revision > good]
        assert len(changes) == 2
        return changes

    by_cli, by_etcdctl = await eventually(recorded, timeout=10)
    assert (by_etcdctl.key, by_etcdctl.actor) == ("overrides/rag.answer", "etcd")
    assert (by_cli.key, by_cli.actor, by_cli.note) == (
        "contexts/reranker",
        "alice",
        "bigger reranker",
    )
    assert [c.revision for c in await first.changes() if c.revision > good] == [
        by_cli.revision,
        by_etcdctl.revision,
    ]

    shown = await asyncio.to_thread(
        cli, "config", "history", "overrides/", server=second.address, etcd=etcd_endpoint,
        prefix=prefix,
    )  # fmt: skip
    assert "overrides/rag.answer" in shown.stdout and "etcd" in shown.stdout
    diffed = await asyncio.to_thread(
        cli, "config", "diff", str(good), server=second.address, etcd=etcd_endpoint,
        prefix=prefix,
    )  # fmt: skip
    assert "--- overrides/rag.answer (new)" in diffed.stdout
    assert "--- contexts/reranker (changed)" in diffed.stdout

    shown_at = await asyncio.to_thread(
        cli, "config", "show", "--at", str(good), server=second.address, etcd=etcd_endpoint,
        prefix=prefix,
    )  # fmt: skip
    values_at_good = json.loads(shown_at.stdout)["values"]
    assert "overrides/rag.answer" not in values_at_good
    assert values_at_good["contexts/reranker"]["model"] != "gpt-4o"
    impact = await asyncio.to_thread(
        cli, "config", "apply", "-f", str(change), "--impact", "--window", "1h",
        server=second.address, etcd=etcd_endpoint, prefix=prefix,
    )  # fmt: skip
    assert impact.returncode == 0, impact.stderr
    assert "nothing written" in impact.stdout and "Not replayed:" in impact.stdout

    started = time.perf_counter()
    rolled = await asyncio.to_thread(
        cli, "config", "rollback", str(good), "--note", "back to known good",
        server=first.address, etcd=etcd_endpoint, prefix=prefix,
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    returned = time.perf_counter()
    await eventually(lambda: _both(first, second, original))
    print(
        f"\nrollback: CLI round trip {1000 * (returned - started):.0f} ms; both replicas "
        f"serving the earlier answer {1000 * (time.perf_counter() - returned):.1f} ms after it"
    )
    _, stored = await read_prefix(etcd, prefix)
    assert "overrides/rag.answer" not in stored
    assert json.loads(stored["contexts/reranker"].value)["model"] != "gpt-4o"

    async def rollback_recorded() -> list[admin_pb2.ConfigChange]:
        rows = [c for c in await second.changes() if c.note.startswith("rollback")]
        assert len(rows) == 2
        return rows

    rows = await eventually(rollback_recorded, timeout=10)
    assert {r.actor for r in rows} == {"alice"}
    assert rows[0].note == f"rollback to revision {good}: back to known good"


async def test_history_survives_compaction(
    replicas: tuple[Replica, Replica], etcd: aetcd.Client, prefix: str, etcd_endpoint: str
) -> None:
    first, second = replicas
    original = await first.model()
    good, _ = await read_prefix(etcd, prefix)
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
        value = json.dumps({"model": model})
        await asyncio.to_thread(
            etcdctl, "put", f"{prefix}overrides/rag.answer", value, etcd=etcd_endpoint
        )
    await eventually(lambda: _both(first, second, "gpt-4o"))
    head, _ = await read_prefix(etcd, prefix)
    await etcd.compact(head)
    assert "compacted" in await _read_at(etcd_endpoint, prefix, good)  # etcd forgot it
    changes = await eventually(lambda: _count(second, "overrides/", 3), timeout=10)
    assert [json.loads(c.value_after_json)["model"] for c in changes] == [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o",
    ]
    at_good = await second.admin.GetConfigAt(
        admin_pb2.GetConfigAtRequest(revision=good), metadata=AUTH
    )
    assert "overrides/rag.answer" not in at_good.values_json
    await second.admin.RollbackConfig(
        admin_pb2.RollbackConfigRequest(revision=good, note="after compaction"), metadata=AUTH
    )
    await eventually(lambda: _both(first, second, original))


async def _read_at(endpoint: str, prefix: str, revision: int) -> str:
    """etcdctl's error output for a read at an old revision."""
    result = await asyncio.to_thread(
        subprocess.run,
        [ETCDCTL, "--endpoints", endpoint, "get", f"{prefix}settings", f"--rev={revision}"],
        capture_output=True,
        text=True,
    )
    return result.stderr


async def _count(replica: Replica, key_prefix: str, n: int) -> list[admin_pb2.ConfigChange]:
    changes = await replica.changes(key_prefix)
    assert len(changes) == n
    return changes


async def test_concurrent_rollback_and_apply_one_wins_nothing_half_written(
    replicas: tuple[Replica, Replica], etcd: aetcd.Client, prefix: str
) -> None:
    first, second = replicas
    good, _ = await read_prefix(etcd, prefix)
    await first.admin.ApplyConfig(
        admin_pb2.ApplyConfigRequest(
            changes=[
                admin_pb2.KeyChange(key="overrides/rag.answer", value_json='{"model": "gpt-4o"}'),
                admin_pb2.KeyChange(key="overrides/reranker", value_json='{"model": "gpt-4o"}'),
            ]
        ),
        metadata=AUTH,
    )
    await eventually(lambda: _count(second, "overrides/", 2), timeout=10)
    base, _ = await read_prefix(etcd, prefix)
    rollback = first.admin.RollbackConfig(
        admin_pb2.RollbackConfigRequest(revision=good, expected_revision=base), metadata=AUTH
    )
    apply = second.admin.ApplyConfig(
        admin_pb2.ApplyConfigRequest(
            changes=[
                admin_pb2.KeyChange(
                    key="overrides/rag.answer", value_json='{"model": "gpt-4o-mini"}'
                ),
                admin_pb2.KeyChange(key="contexts/new.one", value_json='{"model": "gpt-4o"}'),
            ],
            expected_revision=base,
        ),
        metadata=AUTH,
    )
    results = await asyncio.gather(rollback, apply, return_exceptions=True)
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failures) == 1, results
    assert failures[0].code() == grpc.StatusCode.ABORTED
    assert "changed since you loaded it" in (failures[0].details() or "")
    _, stored = await read_prefix(etcd, prefix)
    keys = {k for k in stored if k.startswith(("overrides/", "contexts/new.one"))}
    if isinstance(results[0], grpc.aio.AioRpcError):  # the apply won, all of it
        assert keys == {"overrides/rag.answer", "overrides/reranker", "contexts/new.one"}
        assert json.loads(stored["overrides/rag.answer"].value)["model"] == "gpt-4o-mini"
    else:  # the rollback won, all of it
        assert keys == set()


async def test_an_apply_pinned_before_a_rollback_that_only_deleted_keys_is_refused(
    replicas: tuple[Replica, Replica], etcd: aetcd.Client, prefix: str
) -> None:
    """The rollback above deletes keys and leaves none behind in the directory: a guard
    on the directory's keys alone let the apply through (both "won"; the flaky ordering
    of the concurrent test). The same two calls, rollback first, every time."""
    first, second = replicas
    good, _ = await read_prefix(etcd, prefix)
    await first.admin.ApplyConfig(
        admin_pb2.ApplyConfigRequest(
            changes=[
                admin_pb2.KeyChange(key="overrides/rag.answer", value_json='{"model": "gpt-4o"}')
            ]
        ),
        metadata=AUTH,
    )
    base, _ = await read_prefix(etcd, prefix)
    await first.admin.RollbackConfig(
        admin_pb2.RollbackConfigRequest(revision=good, expected_revision=base), metadata=AUTH
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.admin.ApplyConfig(
            admin_pb2.ApplyConfigRequest(
                changes=[
                    admin_pb2.KeyChange(
                        key="overrides/rag.answer", value_json='{"model": "gpt-4o-mini"}'
                    )
                ],
                expected_revision=base,
            ),
            metadata=AUTH,
        )
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "changed since you loaded it" in (refused.value.details() or "")
    _, stored = await read_prefix(etcd, prefix)
    assert "overrides/rag.answer" not in stored  # the rollback stands


async def _both(first: Replica, second: Replica, model: str) -> None:
    assert await first.model() == model
    assert await second.model() == model
