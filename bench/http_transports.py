"""ResolveModel over the HTTP listener (Connect JSON on HTTP/1.1 and on h2c, Connect binary,
OFREP) against the same call over gRPC (the baseline), on one `modelroute serve` process.

Closed loop, `--concurrency` callers per transport, rounds interleaved so machine noise hits
every transport alike. The clients are Python (grpc.aio, httpx): client cost is part of
each figure, as it is for an application in Python.
Run: `.venv/bin/python bench/http_transports.py [--seconds 3 --rounds 3 --concurrency 16]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
REQUEST = router_pb2.ResolveModelRequest(
    context="rag.answer", user=types_pb2.User(id="user-42", tier="premium")
)
JSON_BODY = b'{"context": "rag.answer", "user": {"id": "user-42", "tier": "premium"}}'
OFREP_BODY = b'{"context": {"targetingKey": "user-42", "tier": "premium"}}'
PATH = "/modelroute.v1.ModelRouterService/ResolveModel"


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "modelroute.server.cli", "serve", "--port", "0", "--admin-port", "0",
         "--data-dir", str(data_dir), "--bootstrap", str(ROOT / "config/bootstrap.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1", "MODELROUTE_LOG_LEVEL": "WARNING",
                          "OTEL_TRACES_EXPORTER": "none"},
    )  # fmt: skip
    assert process.stdout is not None
    grpc_port = 0
    for line in process.stdout:
        if match := re.search(r"serving gRPC on [\d.]+:(\d+)", line):
            grpc_port = int(match.group(1))
        if match := re.search(r"dashboard at http://[\d.]+:(\d+)", line):
            return process, grpc_port, int(match.group(1))
    raise RuntimeError("server did not start")


async def closed_loop(
    call: Callable[[], Awaitable[object]], seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def main(seconds: float, rounds: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        process, grpc_port, http_port = start_server(Path(tmp))
        try:
            await measure(grpc_port, http_port, seconds, rounds, concurrency)
        finally:
            process.terminate()
            process.wait(timeout=30)


async def measure(
    grpc_port: int, http_port: int, seconds: float, rounds: int, concurrency: int
) -> None:
    base = f"http://127.0.0.1:{http_port}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        httpx.AsyncClient(base_url=base, limits=limits) as h1,
        httpx.AsyncClient(base_url=base, http1=False, http2=True) as h2,
    ):
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        await stub.ResolveModel(REQUEST, wait_for_ready=True)

        async def checked(reply: Awaitable[httpx.Response]) -> None:
            response = await reply
            assert response.status_code == 200, response.text

        json_headers = {"Content-Type": "application/json"}
        transports: dict[str, Callable[[], Awaitable[object]]] = {
            "gRPC (baseline)": lambda: stub.ResolveModel(REQUEST),
            "Connect JSON, HTTP/1.1": lambda: checked(
                h1.post(PATH, content=JSON_BODY, headers=json_headers)
            ),
            "Connect JSON, HTTP/2 (h2c)": lambda: checked(
                h2.post(PATH, content=JSON_BODY, headers=json_headers)
            ),
            "Connect binary, HTTP/1.1": lambda: checked(
                h1.post(
                    PATH,
                    content=REQUEST.SerializeToString(),
                    headers={"Content-Type": "application/proto"},
                )
            ),
            "OFREP, HTTP/1.1": lambda: checked(
                h1.post(
                    "/ofrep/v1/evaluate/flags/rag.answer", content=OFREP_BODY, headers=json_headers
                )
            ),
        }
        for call in transports.values():  # warm up connections and code paths
            await closed_loop(call, 0.3, concurrency)
        rates: dict[str, list[float]] = {name: [] for name in transports}
        latencies: dict[str, list[float]] = {name: [] for name in transports}
        for _ in range(rounds):
            for name, call in transports.items():
                rate, samples = await closed_loop(call, seconds, concurrency)
                rates[name].append(rate)
                latencies[name].extend(samples)
    baseline = statistics.median(rates["gRPC (baseline)"])
    print(f"ResolveModel, {concurrency} concurrent callers, {rounds} x {seconds:g} s each")
    print("| transport | calls/s | ratio to gRPC | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name in transports:
        rate = statistics.median(rates[name])
        ordered = sorted(latencies[name])
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[int(len(ordered) * 0.99)] * 1000
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.rounds, arguments.concurrency))
