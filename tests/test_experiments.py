"""Experiment assignment: weights hold over many users, the same user gets the same variant
on every replica process and after a restart, and a weight change moves few users."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aetcd
import grpc
from modelroute.server.core.resolver import Reason, ResolveInput, bucket_of, resolve
from modelroute.server.core.snapshot import Snapshot, SnapshotBuilder
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import ServerProcess, eventually

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def experiment(weights: tuple[int, int], **extra: object) -> dict[str, object]:
    return {
        "context": "rag.answer",
        "enabled": True,
        "bucket_by": "USER",
        "variants": [
            {"id": "control", "model": "gemini-3-flash-preview", "weight": weights[0]},
            {"id": "treatment", "model": "gpt-4o-mini", "weight": weights[1]},
        ],
    } | extra


def snapshot_with(value: dict[str, object]) -> Snapshot:
    values = {
        "models/gemini-3-flash-preview": {"provider": "google"},
        "models/gpt-4o-mini": {"provider": "openai"},
        "contexts/rag.answer": {"model": "gemini-3-flash-preview"},
        "experiments/e70": value,
    }
    snapshot, rejections = SnapshotBuilder(env_overrides={}).apply(
        1, {k: json.dumps(v).encode() for k, v in values.items()}, NOW
    )
    assert not rejections
    return snapshot


def variants(snapshot: Snapshot, users: range) -> list[str]:
    return [
        resolve(snapshot, ResolveInput("rag.answer", user_id=f"user-{u}"), NOW).variant_id
        for u in users
    ]


def test_100k_users_split_70_30_within_one_percent() -> None:
    assigned = Counter(variants(snapshot_with(experiment((70, 30))), range(100_000)))
    assert abs(assigned["control"] / 100_000 - 0.70) < 0.01, assigned
    assert abs(assigned["treatment"] / 100_000 - 0.30) < 0.01, assigned


def test_weight_change_moves_only_users_at_the_boundary() -> None:
    """70/30 → 60/40 moves exactly the users with a bucket in [6000, 7000), all from control
    to treatment: the minimum any scheme must move (10%)."""
    users = range(50_000)
    before = variants(snapshot_with(experiment((70, 30))), users)
    after = variants(snapshot_with(experiment((60, 40))), users)
    moved = [u for u, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert all(before[u] == "control" and after[u] == "treatment" for u in moved)
    assert {u for u in moved} == {u for u in users if 6000 <= bucket_of("e70", f"user-{u}") < 7000}
    assert abs(len(moved) / len(users) - 0.10) < 0.01


def test_outside_window_or_disabled_the_context_default_applies() -> None:
    for value in (
        experiment((0, 100), end=(NOW - timedelta(seconds=1)).isoformat()),
        experiment((0, 100), start=(NOW + timedelta(days=1)).isoformat()),
        experiment((0, 100), enabled=False),
    ):
        decision = resolve(snapshot_with(value), ResolveInput("rag.answer", user_id="u1"), NOW)
        assert (decision.reason, decision.model_id) == (
            Reason.CONTEXT_DEFAULT,
            "gemini-3-flash-preview",
        ), value
    running = resolve(
        snapshot_with(experiment((0, 100))), ResolveInput("rag.answer", user_id="u1"), NOW
    )
    assert (running.reason, running.variant_id) == (Reason.EXPERIMENT, "treatment")


async def test_same_variant_on_two_processes_after_unrelated_changes_and_restart(
    etcd: aetcd.Client, etcd_endpoint: str, prefix: str, seed: int, tmp_path: Path
) -> None:
    value = experiment((50, 50))
    changes = {f"providers/{p}": b"{}" for p in ("google", "openai")}  # no per-minute limits
    changes["experiments/e70"] = json.dumps(value).encode()
    await write_changes(etcd, prefix, changes, 0, [])
    users = [f"user-{u}" for u in range(300)]

    def start(index: int) -> ServerProcess:
        return ServerProcess(
            [
                "--etcd-endpoints",
                etcd_endpoint,
                "--etcd-prefix",
                prefix,
                "--database-url",
                f"sqlite:///{tmp_path / 'usage.db'}",
                "--data-dir",
                str(tmp_path / f"replica{index}"),
            ]
        )

    async def assignments(process: ServerProcess) -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)

            async def one(user: str) -> str:
                reply = await stub.ResolveModel(
                    router_pb2.ResolveModelRequest(
                        context="rag.answer", user=types_pb2.User(id=user, tier="free")
                    )
                )
                assert reply.experiment_id == "e70"
                return reply.variant_id

            return list(await asyncio.gather(*(one(u) for u in users)))

    processes = list(await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(2))))
    try:
        first = await eventually(lambda: assignments(processes[0]), timeout=10)
        assert Counter(first).keys() == {"control", "treatment"}  # both variants in use
        assert await assignments(processes[1]) == first

        # An unrelated change (another context) does not move anyone.
        change = {"model": "gpt-4o", "fallbacks": ["gpt-4o-mini"]}
        revision = await write_changes(
            etcd, prefix, {"contexts/reranker": json.dumps(change).encode()}, 0, []
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{processes[1].port}") as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)

            async def applied() -> None:
                reply = await stub.ResolveModel(router_pb2.ResolveModelRequest(context="reranker"))
                assert reply.config_revision >= revision

            await eventually(applied)
        assert await assignments(processes[1]) == first

        assert processes[0].stop() == 0
        processes[0] = await asyncio.to_thread(start, 0)
        assert await assignments(processes[0]) == first
    finally:
        for process in processes:
            process.stop()
