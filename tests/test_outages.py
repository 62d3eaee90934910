"""Surviving outages: a 3-member etcd cluster losing one member and then all of them under
load, a replica starting while etcd is down, and the usage database going away."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.api.errors import decode_details
from modelroute.server.app import DEFAULT_BOOTSTRAP, ModelrouteServer, ServeOptions
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.etcd import connect, parse_endpoints, write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from sqlalchemy import create_engine, text

from tests.helpers import ServerProcess, eventually

RAG = router_pb2.ResolveModelRequest(context="rag.answer", user=types_pb2.User(id="u1"))
PREFIX = "/modelroute/"


class EtcdCluster:
    """Three etcd processes on loopback forming one cluster."""

    def __init__(self, root: Path, size: int = 3) -> None:
        peers = {f"m{i}": free_port() for i in range(size)}
        initial = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        self.members = [
            EmbeddedEtcd(
                root / name / "data",
                client_port=free_port(),
                name=name,
                peer_port=port,
                initial_cluster=initial,
            )
            for name, port in peers.items()
        ]
        self.endpoints = ",".join(m.endpoint for m in self.members)

    def start(self) -> None:
        for member in self.members:
            member.start(wait=False)  # a member is healthy only once there is quorum
        for member in self.members:
            member.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    etcd_cluster = EtcdCluster(tmp_path / "etcd")
    etcd_cluster.start()
    yield etcd_cluster
    etcd_cluster.stop()


async def seed_usage_map(endpoints: str) -> int:
    values = load_config_file(DEFAULT_BOOTSTRAP)
    for key in [k for k in values if k.startswith("providers/")]:
        values[key] = b"{}"  # no request limits: the steady load must not exhaust them
    client = connect(parse_endpoints(endpoints))
    try:
        return await write_changes(client, PREFIX, values, 0, [])
    finally:
        await client.close()


async def set_context_model(endpoints: str, model: str) -> int:
    """Write as an operator would: retried while the cluster elects a new leader."""
    value = json.dumps({"model": model, "fallbacks": ["gpt-4o-mini"]}).encode()
    client = connect(parse_endpoints(endpoints))
    try:
        for attempt in range(20):
            try:
                return await write_changes(client, PREFIX, {"contexts/rag.answer": value}, 0, [])
            except StoreUnavailableError:
                if attempt == 19:
                    raise
        raise AssertionError("unreachable")
    finally:
        await client.close()


@dataclass
class SteadyLoad:
    """ResolveModel calls in a loop against every replica; counts every failure."""

    routers: list[router_pb2_grpc.ModelRouterServiceStub]
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, index: int) -> None:
        router = self.routers[index % len(self.routers)]
        while not self._stop.is_set():
            try:
                await router.ResolveModel(RAG, timeout=2)
                self.ok += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.002)

    async def until_stopped(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stop.set()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def replica_processes(
    endpoints: str, tmp_path: Path, count: int = 2
) -> AsyncIterator[list[tuple[ServerProcess, grpc.aio.Channel]]]:
    def start(index: int) -> ServerProcess:
        return ServerProcess(
            [
                "--etcd-endpoints",
                endpoints,
                "--database-url",
                f"sqlite:///{tmp_path / 'usage.db'}",
                "--data-dir",
                str(tmp_path / f"replica{index}"),
            ]
        )

    processes = await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(count)))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in processes]
    try:
        yield list(zip(processes, channels, strict=True))
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            process.stop()


async def serves(channel: grpc.aio.Channel, model: str) -> None:
    response = await router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(RAG)
    assert response.model_id == model


async def test_cluster_member_loss_and_full_outage_under_load(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    await seed_usage_map(cluster.endpoints)
    async with replica_processes(cluster.endpoints, tmp_path) as replicas:
        channels = [channel for _, channel in replicas]
        load = SteadyLoad([router_pb2_grpc.ModelRouterServiceStub(c) for c in channels])
        tasks = [asyncio.create_task(load.run(i)) for i in range(4)]
        # Process control blocks (it waits for exits): in threads, so the load keeps flowing.

        # One member of three dies: the others keep quorum; config changes still arrive.
        await asyncio.to_thread(cluster.members[0].kill)
        survivors = ",".join(m.endpoint for m in cluster.members[1:])
        await set_context_model(survivors, "gpt-4o")
        for channel in channels:
            await eventually(lambda c=channel: serves(c, "gpt-4o"), timeout=15)  # type: ignore[misc]

        # Every member down: replicas answer from their last good snapshot, say degraded.
        for member in cluster.members[1:]:
            await asyncio.to_thread(member.stop)
        before = load.ok
        for channel in channels:
            admin = admin_pb2_grpc.AdminServiceStub(channel)

            async def degraded(admin: admin_pb2_grpc.AdminServiceStub = admin) -> None:
                status = await admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
                assert not status.etcd_connected and status.HasField("degraded_since")

            await eventually(degraded, timeout=15)
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest()
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        await eventually(lambda: _assert(load.ok > before + 100), timeout=10)

        # etcd back: replicas resync, and the next change is applied everywhere.
        for member in cluster.members:
            await asyncio.to_thread(member.start, wait=False)
        for member in cluster.members:
            await asyncio.to_thread(member.wait_healthy)
        await set_context_model(cluster.endpoints, "claude-3-sonnet")
        for channel in channels:
            await eventually(lambda c=channel: serves(c, "claude-3-sonnet"), timeout=20)  # type: ignore[misc]
            status = await admin_pb2_grpc.AdminServiceStub(channel).GetConfigStatus(
                admin_pb2.GetConfigStatusRequest()
            )
            assert status.etcd_connected and not status.HasField("degraded_since")
        await load.until_stopped(tasks)
    assert load.failures == []
    assert load.ok > 500, load.ok  # calls kept flowing through every phase


def _assert(condition: bool) -> None:
    assert condition


async def test_replica_starts_from_last_good_file_when_etcd_is_down(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "etcd" / "data", client_port=free_port())
    etcd.start()
    await seed_usage_map(etcd.endpoint)
    options = ServeOptions(
        port=0,
        etcd_endpoints=etcd.endpoint,
        database_url=f"sqlite:///{tmp_path / 'usage.db'}",
        data_dir=tmp_path / "replica",
        etcd_start_timeout_seconds=0.5,
        etcd_alert_after_seconds=0.5,
    )
    first = ModelrouteServer(options)
    await first.start()
    last_good = tmp_path / "replica" / "last-good-config.json"
    try:
        await first.config.wait_ready(timeout=10)
        await eventually(lambda: _assert(last_good.exists()))
    finally:
        await first.stop()
    etcd.stop()

    # No etcd, but a last-good file: serve it, say so, raise an alert.
    second = ModelrouteServer(options)
    await second.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{second.port}")
    try:
        await second.config.wait_ready(timeout=10)
        router = router_pb2_grpc.ModelRouterServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        assert (await router.ResolveModel(RAG)).model_id == "gemini-3-flash-preview"
        status = await admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert status.serving_last_good_file and status.HasField("degraded_since")
        assert status.key_counts["contexts"] == 6

        async def alerted() -> None:
            alerts = await admin.ListAlerts(admin_pb2.ListAlertsRequest())
            assert [a.kind for a in alerts.alerts] == ["etcd_unreachable"]

        await eventually(alerted, timeout=10)

        # etcd back: etcd is the source of truth again, changes apply.
        etcd.start()
        await set_context_model(etcd.endpoint, "gpt-4o")
        await eventually(lambda: serves(channel, "gpt-4o"), timeout=20)
        status = await admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert not status.serving_last_good_file and status.etcd_connected
    finally:
        await channel.close()
        await second.stop()
        etcd.stop()

    # No etcd and no file: NOT_SERVING, and calls are refused with a clear reason.
    options.data_dir = tmp_path / "fresh"
    options.etcd_endpoints = f"127.0.0.1:{free_port()}"
    third = ModelrouteServer(options)
    await third.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{third.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> None:
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(RAG)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert decode_details(caught.value)["ErrorInfo"].reason == "CONFIG_NOT_LOADED"  # type: ignore[attr-defined]
    finally:
        await channel.close()
        await third.stop()


class PrivatePostgres:
    """A PostgreSQL server of our own (Debian's binaries), so the test can stop it."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not found or shutil.which("su") is None:
            pytest.skip("PostgreSQL binaries not installed (.ci/run installs them)")
        self.bin = Path(found[-1])
        # Not under pytest's tmp_path: the postgres user cannot enter root's private dirs.
        self.data = Path(tempfile.mkdtemp(prefix="modelroute-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres")
        self._as_postgres(f"{self.bin}/initdb -D {self.data} -A trust -U postgres")

    def _as_postgres(self, command: str) -> None:
        argv = ["su", "postgres", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command]
        subprocess.run(argv, check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            f"{self.bin}/pg_ctl -D {self.data} -w -o '{options}' -l {self.data}/log start"
        )

    def stop(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl -D {self.data} -w -m fast stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


async def test_usage_database_outage_fails_cleanly_and_loses_nothing(
    etcd_endpoint: str, prefix: str, seed: int, tmp_path: Path
) -> None:
    postgres = PrivatePostgres(tmp_path / "pg")
    postgres.start()
    try:
        await _outage_round_trip(postgres, etcd_endpoint, prefix, tmp_path)
    finally:
        postgres.remove()


async def _outage_round_trip(
    postgres: PrivatePostgres, etcd_endpoint: str, prefix: str, tmp_path: Path
) -> None:
    server = ModelrouteServer(
        ServeOptions(
            port=0,
            etcd_endpoints=etcd_endpoint,
            etcd_prefix=prefix,
            database_url=postgres.url,
            data_dir=tmp_path / "replica",
            seed=False,
        )
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    router = router_pb2_grpc.ModelRouterServiceStub(channel)
    acknowledged: list[str] = []
    refusals: list[grpc.aio.AioRpcError] = []
    counter = 0

    async def report() -> None:
        nonlocal counter
        counter += 1
        report_id = f"r{counter}"
        request = router_pb2.ReportUsageRequest(
            reports=[
                router_pb2.UsageReport(
                    report_id=report_id,
                    context="rag.answer",
                    model_id="gemini-3-flash-preview",
                    outcome=types_pb2.OUTCOME_OK,
                    input_tokens=10,
                )
            ]
        )
        try:
            reply = await router.ReportUsage(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            refusals.append(error)
            raise
        assert reply.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED
        acknowledged.append(report_id)

    try:
        await server.config.wait_ready(timeout=10)
        for _ in range(20):
            await report()
        postgres.stop()

        async def refused() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await report()
            assert refusals

        await eventually(refused, timeout=15)
        error = refusals[-1]
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = decode_details(error)
        assert details["ErrorInfo"].reason == "USAGE_STORE_UNAVAILABLE"  # type: ignore[attr-defined]
        assert "RetryInfo" in details
        assert "password" not in error.details() and postgres.url not in error.details()

        postgres.start()
        before = len(acknowledged)
        await eventually(report, timeout=20)
        for _ in range(20):
            await report()
        assert len(acknowledged) >= before + 21
    finally:
        await channel.close()
        await server.stop()

    engine = create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        stored = {
            row[0] for row in connection.execute(text("SELECT report_id FROM llm_usage_logs"))
        }
    engine.dispose()
    assert set(acknowledged) <= stored
