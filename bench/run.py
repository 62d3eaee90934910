"""modelroute benchmarks. Each figure is compared with a baseline measured in the same run,
because machines are noisy. Run: `make bench` (or `.venv/bin/python bench/run.py`).

1. ResolveModel throughput and latency through gRPC vs. an echo server that answers the
   same request with a same-sized response (tracing on, spans exported over OTLP).
2. etcd put → new answer served: p50/p99 over 200 changes (via WatchConfig, then a resolve).
3. ReportUsage ingestion into SQLite in batches of 100; afterwards every acknowledged row
   must be present.
4. ResolveModel with provider limits counted and a cooldown in force, as a ratio to the
   same server without them (interleaved rounds; config switched through etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.app import DEFAULT_BOOTSTRAP
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import connect, parse_endpoints, write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
REQUEST = router_pb2.ResolveModelRequest(
    context="rag.answer", user=types_pb2.User(id="user-42", tier="premium")
)


def start_process(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1", "MODELROUTE_LOG_LEVEL": "WARNING"} | env,
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"serving gRPC on [\d.]+:(\d+)", line)
        if match:
            return process, int(match.group(1))
    raise RuntimeError("process did not start")


async def load(address: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """Closed-loop load: `concurrency` callers on one channel; returns (calls/s, latencies)."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        await stub.ResolveModel(REQUEST)  # warm up
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await stub.ResolveModel(REQUEST)
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


async def wait_serving(address: str, timeout: float = 30) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            reply = await health.Check(health_pb2.HealthCheckRequest())
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{address} did not become SERVING")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def bench_resolve(
    server: str, echo: str, seconds: float, concurrency: int, rounds: int
) -> dict[str, float]:
    results: dict[str, list[float]] = {"rm": [], "echo": []}
    lat: dict[str, list[float]] = {"rm": [], "echo": []}
    for _ in range(rounds):  # interleave, so drift hits both sides alike
        for name, address in (("echo", echo), ("rm", server)):
            rate, latencies = await load(address, seconds, concurrency)
            results[name].append(rate)
            lat[name].extend(latencies)
    rm, base = statistics.median(results["rm"]), statistics.median(results["echo"])
    return {
        "resolve_per_s": rm,
        "echo_per_s": base,
        "ratio": rm / base,
        "p50_ms": pct(lat["rm"], 50) * 1000,
        "p99_ms": pct(lat["rm"], 99) * 1000,
        "echo_p50_ms": pct(lat["echo"], 50) * 1000,
        "echo_p99_ms": pct(lat["echo"], 99) * 1000,
    }


NO_LIMITS = {f"providers/{p}": b"{}" for p in ("google", "openai", "anthropic")}
# Limits high enough never to be reached, so every call is counted and admitted.
HIGH_LIMITS = {
    f"providers/{p}": json.dumps(
        {
            "requestsPerMinute": 10**9,
            "tokensPerMinute": 10**12,
            "requestsPerDay": 10**12,
            "tokensPerDay": 10**12,
        }
    ).encode()
    for p in ("google", "openai", "anthropic")
}
COOLDOWN_KEY = b"runtime/cooldowns/models/gemini-3-flash-preview"


async def bench_quotas(
    server: str, etcd_endpoint: str, prefix: str, seconds: float, concurrency: int, rounds: int
) -> dict[str, float]:
    """Same server, interleaved: no limits and no cooldowns vs. all four provider limits
    counted at every call plus a cooldown on the context's primary model (so every call
    also walks to the fallback)."""
    client = connect(parse_endpoints(etcd_endpoint))
    rates: dict[str, list[float]] = {"plain": [], "limits": []}
    try:
        for _ in range(rounds):
            for name in ("plain", "limits"):
                await write_changes(
                    client, prefix, dict(HIGH_LIMITS if name == "limits" else NO_LIMITS), 0, []
                )
                if name == "limits":
                    until = time.time() + 3600
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(until))
                    lease = await client.lease(3600)
                    value = json.dumps({"until": stamp, "reason": "bench"}).encode()
                    await client.put(prefix.encode() + COOLDOWN_KEY, value, lease=lease)
                else:
                    await client.delete(prefix.encode() + COOLDOWN_KEY)
                await asyncio.sleep(0.5)  # let the watch apply it (bench only; tests wait)
                async with grpc.aio.insecure_channel(server) as channel:
                    reply = await router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(
                        REQUEST
                    )
                expected = "gpt-4o-mini" if name == "limits" else "gemini-3-flash-preview"
                assert reply.model_id == expected, (name, reply.model_id)
                rate, _ = await load(server, seconds, concurrency)
                rates[name].append(rate)
        await client.delete(prefix.encode() + COOLDOWN_KEY)
        await write_changes(client, prefix, dict(NO_LIMITS), 0, [])
    finally:
        await client.close()
    plain, limited = statistics.median(rates["plain"]), statistics.median(rates["limits"])
    return {"plain_per_s": plain, "limits_per_s": limited, "ratio": limited / plain}


async def bench_reload(
    server: str, etcd_endpoint: str, prefix: str, changes: int
) -> dict[str, float]:
    client = connect(parse_endpoints(etcd_endpoint))
    delays: list[float] = []
    async with grpc.aio.insecure_channel(server) as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        stream = stub.WatchConfig(router_pb2.WatchConfigRequest())
        await stream.read()
        for i in range(changes):
            model = "gpt-4o" if i % 2 == 0 else "gpt-4o-mini"
            value = json.dumps({"model": model, "fallbacks": []}).encode()
            start = time.perf_counter()
            revision = await write_changes(client, prefix, {"contexts/bench": value}, 0, [])
            while (await stream.read()).config_revision < revision:
                pass
            answer = await stub.ResolveModel(router_pb2.ResolveModelRequest(context="bench"))
            delays.append(time.perf_counter() - start)
            assert answer.model_id == model and answer.config_revision >= revision
        stream.cancel()
    await client.close()
    return {"p50_ms": pct(delays, 50) * 1000, "p99_ms": pct(delays, 99) * 1000}


async def bench_ingest(
    server: str, database: Path, seconds: float, concurrency: int
) -> dict[str, float]:
    acknowledged: list[str] = []
    async with grpc.aio.insecure_channel(server) as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        deadline = time.perf_counter() + seconds

        async def sender(worker: int) -> None:
            batch = 0
            while time.perf_counter() < deadline:
                reports = [
                    router_pb2.UsageReport(
                        report_id=f"b{worker}-{batch}-{k}",
                        context="rag.answer",
                        model_id="gpt-4o-mini",
                        input_tokens=800,
                        output_tokens=200,
                        latency_ms=900,
                        outcome=types_pb2.OUTCOME_OK,
                    )
                    for k in range(100)
                ]
                reply = await stub.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
                acknowledged.extend(
                    r.report_id
                    for r in reply.results
                    if r.status == router_pb2.REPORT_STATUS_ACCEPTED
                )
                batch += 1

        started = time.perf_counter()
        await asyncio.gather(*(sender(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    import sqlite3

    with sqlite3.connect(database) as connection:
        stored = {r[0] for r in connection.execute("SELECT report_id FROM llm_usage_logs")}
    missing = len(set(acknowledged) - stored)
    return {
        "reports_per_s": len(acknowledged) / elapsed,
        "acknowledged": len(acknowledged),
        "missing": missing,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="spans are still created but not exported (isolates the cost of OTLP export)",
    )
    args = parser.parse_args()

    sink, sink_port = start_process([sys.executable, str(ROOT / "bench" / "otlp_sink.py")], {})

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedEtcd(Path(tmp) / "etcd", client_port=free_port()) as etcd,
    ):
        prefix = "/modelroute-bench/"
        client = connect(parse_endpoints(etcd.endpoint))
        # Without provider limits: the ResolveModel figures compare with the foundation's,
        # and a long run must not exhaust the example map's per-minute limits.
        seeded = dict(load_config_file(DEFAULT_BOOTSTRAP)) | NO_LIMITS
        await write_changes(client, prefix, seeded, 0, [])
        await client.close()
        database = Path(tmp) / "usage.db"
        server, port = start_process(
            [
                sys.executable,
                "-m",
                "modelroute.server.cli",
                "serve",
                "--port",
                "0",
                "--etcd-endpoints",
                etcd.endpoint,
                "--etcd-prefix",
                prefix,
                "--database-url",
                f"sqlite:///{database}",
                "--data-dir",
                str(Path(tmp) / "d"),
            ],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            | ({"OTEL_TRACES_EXPORTER": "none"} if args.no_export else {}),
        )
        await wait_serving(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            sample = await router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(REQUEST)
        echo, echo_port = start_process(
            [sys.executable, str(ROOT / "bench" / "echo_server.py")],
            {"ECHO_RESPONSE_HEX": sample.SerializeToString().hex()},
        )
        try:
            resolve = await bench_resolve(
                f"127.0.0.1:{port}",
                f"127.0.0.1:{echo_port}",
                args.seconds,
                args.concurrency,
                args.rounds,
            )
            quotas = await bench_quotas(
                f"127.0.0.1:{port}",
                etcd.endpoint,
                prefix,
                args.seconds,
                args.concurrency,
                args.rounds,
            )
            reload = await bench_reload(f"127.0.0.1:{port}", etcd.endpoint, prefix, args.changes)
            ingest = await bench_ingest(f"127.0.0.1:{port}", database, args.seconds * 2, 8)
        finally:
            for process in (server, echo):
                process.terminate()
                process.wait(30)
    sink.terminate()
    sink_out, _ = sink.communicate(timeout=30)
    spans = re.search(r"spans received: (\d+)", sink_out)

    print(
        f"ResolveModel: {resolve['resolve_per_s']:.0f}/s vs echo {resolve['echo_per_s']:.0f}/s"
        f" -> ratio {resolve['ratio']:.2f} (goal >= 0.85); p50 {resolve['p50_ms']:.2f} ms,"
        f" p99 {resolve['p99_ms']:.2f} ms (echo p50 {resolve['echo_p50_ms']:.2f} ms,"
        f" p99 {resolve['echo_p99_ms']:.2f} ms); spans exported: {spans.group(1) if spans else '?'}"
    )
    print(
        f"ResolveModel with quotas + cooldown: {quotas['limits_per_s']:.0f}/s vs"
        f" {quotas['plain_per_s']:.0f}/s without -> ratio {quotas['ratio']:.2f} (goal >= 0.9)"
    )
    print(
        f"etcd put -> new answer: p50 {reload['p50_ms']:.1f} ms, p99 {reload['p99_ms']:.1f} ms"
        f" over {args.changes} changes (goal p99 <= 50 ms)"
    )
    print(
        f"ReportUsage ingestion: {ingest['reports_per_s']:.0f} reports/s in batches of 100"
        f" (goal >= 10000); acknowledged {ingest['acknowledged']:.0f},"
        f" missing afterwards {ingest['missing']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
