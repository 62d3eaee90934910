"""`modelroute serve --workers N`: processes sharing the gRPC port, supervised."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path

import aetcd
import grpc
import pytest
from modelroute.server.api.router_service import WORKER_METADATA
from modelroute.storage.database import create_engine_for
from modelroute.storage.etcd import write_changes
from modelroute.storage.instance_file import read_instance
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from sqlalchemy import text

from tests.helpers import ServerProcess, eventually, run_cli

pytestmark = pytest.mark.slow


# gRPC shares connections between channels to one target (a global subchannel pool): a
# "new channel" could ride an old connection, and the kernel spreads connections, not calls.
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def worker_pids(parent: int) -> set[int]:
    """The worker processes of `serve --workers` (not multiprocessing's resource tracker)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue  # gone since it was listed (a killed worker being reaped)
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                pids.add(int(child))
    return pids


def running(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def serve_workers(tmp_path: Path, etcd_endpoint: str, prefix: str) -> ServerProcess:
    return ServerProcess(
        [
            "--workers",
            "2",
            "--etcd-endpoints",
            etcd_endpoint,
            "--etcd-prefix",
            prefix,
            "--database-url",
            f"sqlite:///{tmp_path / 'usage.db'}",
            "--data-dir",
            str(tmp_path / "d"),
        ]
    )


async def answering_worker(address: str, context: str = "rag.answer") -> tuple[str, str]:
    """(worker, model) of a resolve on a new connection (new source port)."""
    async with grpc.aio.insecure_channel(address, options=FRESH_CONNECTION) as channel:
        call = router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(
            router_pb2.ResolveModelRequest(context=context)
        )
        reply = await call
        return str(dict(await call.trailing_metadata())[WORKER_METADATA]), reply.model_id


async def test_requests_spread_over_every_worker_config_reaches_all_sigterm_stops_all(
    tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int, etcd: aetcd.Client
) -> None:
    server = await asyncio.to_thread(serve_workers, tmp_path, etcd_endpoint, prefix)
    address = f"127.0.0.1:{server.port}"
    try:
        assert len(worker_pids(server.process.pid)) == 2
        seen: Counter[str] = Counter()

        async def both_answered() -> None:
            seen[(await answering_worker(address))[0]] += 1
            assert set(seen) == {"0", "1"}, seen

        # Each worker starts serving on its own schedule; connections spread once both do.
        await eventually(both_answered, timeout=60)

        value = json.dumps({"model": "claude-3-sonnet", "fallbacks": []}).encode()
        await write_changes(etcd, prefix, {"contexts/workers.test": value}, 0, [])
        answered_new: set[str] = set()

        async def every_worker_serves_the_change() -> None:
            worker, model = await answering_worker(address, "workers.test")
            assert model == "claude-3-sonnet"
            answered_new.add(worker)
            assert answered_new == {"0", "1"}, answered_new

        await eventually(every_worker_serves_the_change, timeout=30)
        workers = worker_pids(server.process.pid)

        # The CLI finds the server through <data_dir>/server.json, written for the parent.
        data_dir = tmp_path / "d"
        info = read_instance(data_dir)
        assert info is not None and info.pid == server.process.pid
        assert info.grpc_address == address and info.admin_url
        found = await run_cli(
            "resolve", "workers.test", "--data-dir", str(data_dir), etcd="", prefix=""
        )
        assert found.returncode == 0, found.stderr
        assert "claude-3-sonnet" in found.stdout
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert not running(workers)
    assert read_instance(tmp_path / "d") is None  # gone with the parent


def report(report_id: str) -> router_pb2.UsageReport:
    return router_pb2.UsageReport(
        report_id=report_id,
        context="rag.answer",
        model_id="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        latency_ms=100,
        outcome=types_pb2.OUTCOME_OK,
        user=types_pb2.User(id="u1", tier="premium"),
    )


async def test_killed_worker_is_restarted_and_loses_nothing_it_acknowledged(
    tmp_path: Path, etcd_endpoint: str, prefix: str, seed: int
) -> None:
    server = await asyncio.to_thread(serve_workers, tmp_path, etcd_endpoint, prefix)
    address = f"127.0.0.1:{server.port}"
    acknowledged: list[str] = []
    answered_by: Counter[str] = Counter()
    stop = asyncio.Event()

    async def sender(index: int) -> None:
        batch = 0
        while not stop.is_set():
            # A new channel per batch: batches land on both workers.
            async with grpc.aio.insecure_channel(address, options=FRESH_CONNECTION) as channel:
                call = router_pb2_grpc.ModelRouterServiceStub(channel).ReportUsage(
                    router_pb2.ReportUsageRequest(
                        reports=[report(f"s{index}-b{batch}-{k}") for k in range(20)]
                    ),
                    timeout=10,
                )
                try:
                    reply = await call
                except grpc.aio.AioRpcError:
                    continue  # the killed worker's calls fail; unacknowledged may be lost
                finally:
                    batch += 1
                answered_by[str(dict(await call.trailing_metadata())[WORKER_METADATA])] += 1
            acknowledged.extend(
                r.report_id for r in reply.results if r.status == router_pb2.REPORT_STATUS_ACCEPTED
            )

    try:
        senders = [asyncio.create_task(sender(i)) for i in range(4)]

        def both_busy() -> None:
            assert answered_by["0"] >= 3 and answered_by["1"] >= 3, answered_by

        await eventually(both_busy, timeout=60)
        before = worker_pids(server.process.pid)
        victim = max(before)
        os.kill(victim, signal.SIGKILL)

        def restarted() -> set[int]:
            now = worker_pids(server.process.pid)
            assert victim not in now and len(now) == 2, now
            return now

        after = await eventually(restarted, timeout=30)
        served_after_restart = Counter(answered_by)

        def restarted_one_answers() -> None:
            fresh = answered_by - served_after_restart
            assert fresh["0"] >= 1 and fresh["1"] >= 1, fresh

        await eventually(restarted_one_answers, timeout=60)
        stop.set()
        await asyncio.gather(*senders)
    finally:
        stop.set()
        code = await asyncio.to_thread(server.stop)
    assert code == 0
    assert len(after - before) == 1
    assert len(acknowledged) >= 100
    engine = create_engine_for(f"sqlite:///{tmp_path / 'usage.db'}")
    with engine.connect() as connection:
        stored = {r[0] for r in connection.execute(text("SELECT report_id FROM llm_usage_logs"))}
    engine.dispose()
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged reports missing"
    assert "exited with -9" in "".join(server.output)
