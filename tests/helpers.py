"""Helpers shared by the test modules (fixtures live in conftest.py).

Servers in-process (`Running`) or as processes (`ServerProcess`), `eventually` instead of
sleeps, the CLI as an operator runs it, and traffic/config seeding shortcuts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2_grpc
from modelroute.server.app import ModelrouteServer
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2


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


def modelroute(*args: str, etcd: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelroute.server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "MODELROUTE_ETCD_ENDPOINTS": etcd,
            "MODELROUTE_ETCD_PREFIX": prefix,
            "PATH": "/usr/bin:/bin",
        },
    )


async def run_cli(*args: str, etcd: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(modelroute, *args, etcd=etcd, prefix=prefix)


async def put(etcd: aetcd.Client, prefix: str, key: str, value: object) -> int:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return await write_changes(etcd, prefix, {key: raw}, 0, [])


def usage(report_id: str, model: str = "gemini-3-flash-preview", **fields: object):
    base: dict[str, object] = {
        "report_id": report_id,
        "context": "rag.answer",
        "model_id": model,
        "input_tokens": 1000,
        "output_tokens": 500,
        "latency_ms": 100,
        "outcome": types_pb2.OUTCOME_OK,
    }
    return router_pb2.UsageReport(**(base | fields))  # type: ignore[arg-type]


EXPERIMENT = {
    "context": "rag.answer",
    "variants": [
        {"id": "control", "model": "gemini-3-flash-preview", "weight": 50},
        {"id": "mini", "model": "gpt-4o-mini", "weight": 50},
    ],
    "bucket_by": "REQUEST",
    "enabled": True,
}


async def seed_experiment_traffic(
    server: Running, etcd: aetcd.Client, prefix: str, calls: int = 400
) -> dict[str, int]:
    """Real decisions, then ReportUsage with their decision ids (so rows carry the variant);
    the `mini` variant fails 40% of its calls, `control` never: a significant difference."""
    revision = await write_changes(
        etcd, prefix, {"experiments/cheap": json.dumps(EXPERIMENT).encode()}, 0, []
    )

    async def loaded() -> None:
        current = server.server.config.current
        assert current is not None and current.revision >= revision

    await eventually(loaded)
    decisions = await asyncio.gather(
        *(
            server.router.ResolveModel(
                router_pb2.ResolveModelRequest(context="rag.answer", request_id=f"req-{i}")
            )
            for i in range(calls)
        )
    )
    per_variant: dict[str, int] = {}
    reports = []
    for i, decision in enumerate(decisions):
        variant = decision.variant_id
        seen = per_variant.get(variant, 0)
        per_variant[variant] = seen + 1
        failed = variant == "mini" and seen % 5 < 2
        reports.append(
            usage(
                f"exp-{i}",
                model=decision.model_id,
                decision_id=decision.decision_id,
                outcome=types_pb2.OUTCOME_SERVER_ERROR if failed else types_pb2.OUTCOME_OK,
            )
        )
    await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
    return per_variant


# Browser tests run Debian's Chromium through Playwright (no browser download).
CHROMIUM = os.environ.get("MODELROUTE_CHROMIUM", "/usr/bin/chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)),
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MODELROUTE_CHROMIUM)",
)


class WebhookReceiver:
    """A local HTTP server that records every alert POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, object]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> Counter[str]:
        return Counter(str(alert["kind"]) for alert in self.received)

    def close(self) -> None:
        self.server.shutdown()
