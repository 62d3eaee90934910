"""Helpers shared by the test modules (fixtures live in conftest.py).

Servers in-process (`Running`) or as processes (`ServerProcess`), `eventually` instead of
sleeps, the CLI as an operator runs it, and traffic/config seeding shortcuts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from modelroute.admin.v1 import admin_pb2_grpc
from modelroute.server.app import ModelrouteServer
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from sqlalchemy import text


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
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        own_group: bool = False,
        cwd: Path | None = None,
    ) -> None:
        """`own_group`: a process group of its own, as a shell gives a foreground job (so
        a test can send Ctrl-C's SIGINT to the whole group). `cwd`: where it runs (the
        default data dir is `.modelroute` there)."""
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
            cwd=cwd,
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


def modelroute(
    *args: str,
    etcd: str,
    prefix: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, with only the environment given here (plus etcd's
    location when `etcd` is set) and in `cwd` (default: the repository)."""
    base = {"PATH": "/usr/bin:/bin"}
    if etcd:
        base |= {"MODELROUTE_ETCD_ENDPOINTS": etcd, "MODELROUTE_ETCD_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "modelroute.server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=base | (env or {}),
    )


async def run_cli(
    *args: str,
    etcd: str,
    prefix: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(modelroute, *args, etcd=etcd, prefix=prefix, cwd=cwd, env=env)


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


# --- TLS: a throwaway CA and certificates (test_security.py, test_cli_tls.py, ...) ---


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def read(self, name: str) -> bytes:
        path: Path = getattr(self, name)
        return path.read_bytes()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelroute test CA")])
    ca_cert = _issue("modelroute test CA", ca_key, ca_name, ca_key, ca=True)
    files: dict[str, Path] = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"modelroute {role}", key, ca_name, ca_key, usage=usage)
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}-key.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"].write_bytes(_key_pem(key))
    return Pki(**files)


class Receiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """An OTLP/gRPC collector keeping every span and metric it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metrics: list[Any] = []

    async def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    self.metrics.extend(scope.metrics)
            return metrics_service_pb2.ExportMetricsServiceResponse()
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        return [s for s in self.spans if s.name == name]


def attributes(span: Any) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def usage_rows(server: Running, where: str = "1=1") -> list[dict[str, Any]]:
    assert server.server.engine is not None
    with server.server.engine.connect() as connection:
        result = connection.execute(
            text(f"SELECT * FROM llm_usage_logs WHERE {where} ORDER BY created_at")
        )
        return [dict(r._mapping) for r in result]


UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0, "cooldown_seconds": 60}


USER_EXPERIMENT = {
    "context": "rag.answer",
    "variants": [
        {"id": "control", "model": "gemini-3-flash-preview", "weight": 50},
        {"id": "mini", "model": "gpt-4o-mini", "weight": 50},
    ],
    "bucket_by": "USER",
    "enabled": True,
}


async def put_applied(
    running: Running, etcd: aetcd.Client, prefix: str, key: str, value: object
) -> None:
    """Write a key and wait until the replica serves a snapshot that includes it."""
    written = await etcd.put(f"{prefix}{key}".encode(), json.dumps(value).encode())

    async def applied() -> None:
        current = running.server.config.current
        assert current is not None and int(current.revision) >= written.header.revision

    await eventually(applied)


def otlp_exporting_server(
    tmp_path: Path, etcd_endpoint: str, prefix: str, otlp_port: int, env: dict[str, str]
) -> ServerProcess:
    """`modelroute serve` exporting spans (and metrics) over OTLP to 127.0.0.1:`otlp_port`."""
    return ServerProcess(
        [
            "--etcd-endpoints",
            etcd_endpoint,
            "--etcd-prefix",
            prefix,
            "--database-url",
            f"sqlite:///{tmp_path / 'u.db'}",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        | env,
    )
