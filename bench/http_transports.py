"""ResolveModel over the HTTP listener (Connect JSON, Connect binary and OFREP, on h2c)
against the same call over gRPC (the baseline), on one `modelroute serve` process.

The load generator is nghttp2's `h2load` (Debian `nghttp2-client`) for every transport,
gRPC included (a pre-framed request body), so the figures compare the server's transports,
not Python HTTP clients. (h2load's HTTP/1.1 mode counts hypercorn's responses, which carry
an empty reason phrase, as failed; HTTP/1.1 is not measured here.) Rounds are interleaved
so machine noise hits every transport alike.
Run: `.venv/bin/python bench/http_transports.py [--requests 3000 --rounds 3]`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
REQUEST = router_pb2.ResolveModelRequest(
    context="rag.answer", user=types_pb2.User(id="user-42", tier="premium")
)
JSON_BODY = b'{"context": "rag.answer", "user": {"id": "user-42", "tier": "premium"}}'
OFREP_BODY = b'{"context": {"targetingKey": "user-42", "tier": "premium"}}'
PATH = "/modelroute.v1.ModelRouterService/ResolveModel"


def unlimited_bootstrap(directory: Path) -> Path:
    """The seed config without provider limits: a throughput run must not hit quotas."""
    config = yaml.safe_load((ROOT / "config/bootstrap.yaml").read_text())
    for limits in config["providers"].values():
        limits.update(requests_per_minute=0, tokens_per_minute=0)
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "modelroute.server.cli", "serve", "--port", "0", "--admin-port", "0",
         "--data-dir", str(data_dir / "data"), "--bootstrap", str(unlimited_bootstrap(data_dir))],
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


def h2load(
    url: str, body: Path, headers: dict[str, str], flags: list[str], requests: int
) -> tuple[float, float]:
    """(requests/s, mean ms) of one h2load run; every request must succeed (2xx)."""
    command = ["h2load", "-n", str(requests), *flags, "-d", str(body), url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    ok = int(re.search(r"status codes: (\d+) 2xx", output).group(1))  # type: ignore[union-attr]
    assert ok == requests, output
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output)
    assert mean is not None, output
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
    return rate, float(mean.group(1)) * scale


def main(requests: int, rounds: int, connections: int, streams: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        process, grpc_port, http_port = start_server(directory)
        try:
            wait_until_serving(grpc_port)
            measure(directory, grpc_port, http_port, requests, rounds, connections, streams)
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_until_serving(grpc_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.ResolveModel(REQUEST, timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def measure(
    directory: Path,
    grpc_port: int,
    http_port: int,
    requests: int,
    rounds: int,
    connections: int,
    streams: int,
) -> None:
    binary = REQUEST.SerializeToString()
    bodies = {
        "grpc": struct.pack(">BI", 0, len(binary)) + binary,  # one gRPC length-prefixed message
        "proto": binary,
        "json": JSON_BODY,
        "ofrep": OFREP_BODY,
    }
    for name, content in bodies.items():
        (directory / name).write_bytes(content)
    h2 = ["-c", str(connections), "-m", str(streams)]
    http = f"http://127.0.0.1:{http_port}"
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    json_headers = {"content-type": "application/json"}
    runs = {
        "gRPC, HTTP/2 (baseline)": (
            f"http://127.0.0.1:{grpc_port}{PATH}",
            "grpc",
            grpc_headers,
            h2,
        ),
        "Connect JSON, HTTP/2 (h2c)": (http + PATH, "json", json_headers, h2),
        "Connect binary, HTTP/2 (h2c)": (
            http + PATH,
            "proto",
            {"content-type": "application/proto"},
            h2,
        ),
        "OFREP, HTTP/2 (h2c)": (
            http + "/ofrep/v1/evaluate/flags/rag.answer",
            "ofrep",
            json_headers,
            h2,
        ),
    }
    for url, body, headers, flags in runs.values():  # warm up
        h2load(url, directory / body, headers, flags, 200)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    means: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (url, body, headers, flags) in runs.items():
            rate, mean = h2load(url, directory / body, headers, flags, requests)
            rates[name].append(rate)
            means[name].append(mean)
    baseline = statistics.median(rates["gRPC, HTTP/2 (baseline)"])
    print(
        f"ResolveModel under h2load: {requests} requests x {rounds} rounds, "
        f"{connections * streams} in flight (HTTP/2: {connections} connections x {streams} streams)"
    )
    print("| transport | requests/s | ratio to gRPC | mean latency ms |")
    print("|---|---:|---:|---:|")
    for name in runs:
        rate = statistics.median(rates[name])
        mean = statistics.median(means[name])
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f} | {mean:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=4)
    arguments = parser.parse_args()
    main(arguments.requests, arguments.rounds, arguments.connections, arguments.streams)
