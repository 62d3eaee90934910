"""ResolveModel hot path against a bare grpc.aio server, loaded by h2load (a C client, so the
load generator does not eat the Python servers' CPU budget).

Four servers, one process each, all on 127.0.0.1: the echo server (grpc.aio answering the
same response bytes, zero work; the baseline, on asyncio's loop), the same echo on uvloop
(modelroute's default loop: the second set of ratios), modelroute with spans exported over
OTLP to a sink process, and modelroute with export off. Rounds are interleaved (echo, echo
uvloop, export on, export off, echo, ...) so drift hits every side alike. Printed:

- throughput (h2load -c 4 -m 16, a fixed number of requests per round), ratio to echo
  (goal >= 0.85 with export on);
- p99 latency at a fixed total rate (h2load --rps, default 1,000 req/s), ratio to echo's
  p99 (goal <= 1.2 with export on);
- spans: the sink's count of `modelroute.resolve` spans against the decisions the exporting
  server counted (its /metrics), and the spans it reports dropped (goal: equal, 0 dropped).

Each side's server CPU per request comes with its loop thread's share: with one process,
the loop thread is the budget that runs out first. h2load's `--rps` starts requests in
bursts (about 8 every 10 ms at 1,000 req/s; printed), so p99 is about the time to serve a
burst, and follows the per-call cost.

`--floor` adds two cut-down modelroute servers (export on; `bench/serve_variant.py`):
"answer only" returns a prepared answer (what the server costs around the handler), "no
resolve" runs only the per-call parts no cache could skip (validation, decision id,
response, decision metrics, span). `--workers N` runs both modelroute servers with `serve
--workers N`; `--compare-workers` instead compares export-on modelroute with 1 worker
against 2 workers (throughput ratio).

Run: `.venv/bin/python bench/hotpath.py` (needs `h2load`: Debian's nghttp2-client).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST_PATH = "/modelroute.v1.ModelRouterService/ResolveModel"
EXPORT_WORKER = "modelroute.server.telemetry.export_worker"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    port: int
    admin_port: int = 0
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 60) -> str:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        time.sleep(0.2)  # let the drain thread read the last lines
        return "".join(self.output)


def start(name: str, args: list[str], env: dict[str, str]) -> Process:
    popen = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1", "MODELROUTE_LOG_LEVEL": "WARNING"} | env,
    )
    assert popen.stdout is not None
    process = Process(name, popen, 0)
    deadline = time.monotonic() + 60
    for line in popen.stdout:
        process.output.append(line)
        if match := re.search(r"serving gRPC on [\d.]+:(\d+)", line):
            process.port = int(match.group(1))
        if match := re.search(r"dashboard at http://[\d.]+:(\d+)/", line):
            process.admin_port = int(match.group(1))
        wants_admin = "--admin-port" in args
        if process.port and (process.admin_port or not wants_admin):
            break
        if time.monotonic() > deadline:
            break
    if not process.port:
        raise RuntimeError(f"{name} did not start:\n" + "".join(process.output))

    def drain() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            process.output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return process


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: uncompressed flag + 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def h2load(
    port: int,
    body: Path,
    *,
    requests: int,
    clients: int,
    streams: int,
    rps: int | None = None,
    log_file: Path | None = None,
    starts: list[int] | None = None,
) -> tuple[float, int, list[float]]:
    """(requests/s, succeeded, latencies in ms from the log file if one is asked for)."""
    args = [
        "h2load",
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    if rps is not None:
        args += ["--rps", str(rps)]
    if log_file is not None:
        args += ["--log-file", str(log_file)]
    args.append(f"http://127.0.0.1:{port}{REQUEST_PATH}")
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    succeeded = re.search(r"(\d+) succeeded", out)
    if rate is None or succeeded is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    latencies: list[float] = []
    if log_file is not None:
        for line in log_file.read_text().splitlines():
            started, status, micros = line.split("\t")
            if status == "200":
                latencies.append(int(micros) / 1000)
            if starts is not None:
                starts.append(int(started))
        log_file.unlink()
    return float(rate.group(1)), int(succeeded.group(1)), latencies


def cpu_seconds(pid: int, *, only: str = "") -> float:
    """User + system CPU of `pid` and its descendants (workers, exporter children), from
    /proc; `only`: just the processes whose command line contains it."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            if not only or only.encode() in Path(f"/proc/{current}/cmdline").read_bytes():
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def loop_thread_seconds(pid: int) -> float:
    """CPU of the process's first thread: the event loop that runs every handler (with
    one process, the budget that runs out first)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst_sizes(starts: list[int]) -> list[int]:
    """Requests h2load started within 200 us of the previous one, per burst."""
    sizes, current = [], 1
    ordered = sorted(starts)
    for before, after in itertools.pairwise(ordered):
        if after - before < 200:
            current += 1
        else:
            sizes.append(current)
            current = 1
    return [*sizes, current]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def scrape_decisions(admin_port: int) -> tuple[int, int]:
    """(decisions, spans dropped) as the server's /metrics counts them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    decisions = sum(
        float(m.group(1))
        for m in re.finditer(r"^modelroute_decisions_total\{[^}]*\} ([\d.e+]+)$", text, re.M)
    )
    dropped = sum(
        float(m.group(1))
        for m in re.finditer(
            r"^modelroute_spans_dropped_total(?:\{[^}]*\})? ([\d.e+]+)$", text, re.M
        )
    )
    return int(decisions), int(dropped)


def start_modelroute(
    name: str,
    tmp: Path,
    etcd: str,
    prefix: str,
    workers: int,
    env: dict[str, str],
    event_loop: str = "uvloop",
    entry: tuple[str, ...] = ("-m", "modelroute.server.cli"),
) -> Process:
    args = [
        sys.executable,
        *entry,
        "serve",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--etcd-endpoints",
        etcd,
        "--etcd-prefix",
        prefix,
        "--database-url",
        f"sqlite:///{tmp / name}.db",
        "--data-dir",
        str(tmp / name),
        "--event-loop",
        event_loop,
    ]
    if workers != 1:
        # A fixed port: workers share it through SO_REUSEPORT.
        from modelroute.storage.embedded_etcd import free_port

        args[args.index("--port") + 1] = str(free_port())
        args += ["--workers", str(workers)]
    return start(name, args, env)


def wait_serving(port: int, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port} did not become SERVING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000, help="per throughput round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rate", type=int, default=1000, help="total req/s, latency rounds")
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="per latency round")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compare-workers", action="store_true")
    parser.add_argument("--event-loop", default="uvloop", help="modelroute's (serve --event-loop)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run modelroute (export on) with ResolveModel cut down (bench/serve_variant.py):"
        " 'answer only' and 'no resolve'",
    )
    args = parser.parse_args()
    if not subprocess.run(["which", "h2load"], capture_output=True).stdout:
        sys.exit("h2load not found: apt-get install nghttp2-client")

    from modelroute.server.api.config_apply import load_config_file
    from modelroute.server.app import DEFAULT_BOOTSTRAP
    from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
    from modelroute.storage.etcd import connect, parse_endpoints, write_changes
    from modelroute.v1 import router_pb2, types_pb2

    request = router_pb2.ResolveModelRequest(
        context="rag.answer", user=types_pb2.User(id="user-42", tier="premium")
    )
    sink = start("sink", [sys.executable, str(ROOT / "bench" / "otlp_sink.py")], {})
    export_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    processes: list[Process] = [sink]
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        EmbeddedEtcd(Path(tmp_name) / "etcd", client_port=free_port()) as etcd,
    ):
        tmp = Path(tmp_name)
        prefix = "/modelroute-hotpath/"
        import asyncio

        async def seed() -> None:
            client = connect(parse_endpoints(etcd.endpoint))
            # No provider limits: a long run must not exhaust the example's per-minute limits.
            no_limits = {f"providers/{p}": b"{}" for p in ("google", "openai", "anthropic")}
            values = dict(load_config_file(DEFAULT_BOOTSTRAP)) | no_limits
            await write_changes(client, prefix, values, 0, [])
            await client.close()

        asyncio.run(seed())
        try:
            if args.compare_workers:
                sides = {
                    "1 worker": start_modelroute("w1", tmp, etcd.endpoint, prefix, 1, export_env),
                    "2 workers": start_modelroute("w2", tmp, etcd.endpoint, prefix, 2, export_env),
                }
            else:
                on = start_modelroute(
                    "on", tmp, etcd.endpoint, prefix, args.workers, export_env, args.event_loop
                )
                off = start_modelroute(
                    "off",
                    tmp,
                    etcd.endpoint,
                    prefix,
                    args.workers,
                    {"OTEL_TRACES_EXPORTER": "none"},
                    args.event_loop,
                )
                sides = {"export on": on, "export off": off}
                if args.floor:
                    variant = (str(ROOT / "bench" / "serve_variant.py"),)
                    for name in ("answer only", "no resolve"):
                        sides[name] = start_modelroute(
                            name.replace(" ", "-"),
                            tmp,
                            etcd.endpoint,
                            prefix,
                            1,
                            {**export_env, "MODELROUTE_BENCH_VARIANT": name.replace(" ", "-")},
                            args.event_loop,
                            variant,
                        )
            processes += sides.values()
            for process in sides.values():
                wait_serving(process.port)
            import grpc
            from modelroute.v1 import router_pb2_grpc

            first = next(iter(sides.values()))
            with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
                sample = router_pb2_grpc.ModelRouterServiceStub(channel).ResolveModel(request)
            if not args.compare_workers:
                echoes = {
                    name: start(
                        name,
                        [sys.executable, str(ROOT / "bench" / "echo_server.py")],
                        {"ECHO_RESPONSE_HEX": sample.SerializeToString().hex(), **loop},
                    )
                    for name, loop in (("echo", {}), ("echo uvloop", {"ECHO_EVENT_LOOP": "uvloop"}))
                }
                processes += echoes.values()
                sides = {**echoes, **sides}
            body = tmp / "request.bin"
            body.write_bytes(grpc_frame(request.SerializeToString()))
            common = {"clients": args.clients, "streams": args.streams}
            for process in sides.values():  # warm up every side
                h2load(process.port, body, requests=2000, **common)

            rates: dict[str, list[float]] = {name: [] for name in sides}
            cpu: dict[str, float] = {name: 0.0 for name in sides}
            loop_cpu: dict[str, float] = {name: 0.0 for name in sides}
            child_cpu = 0.0  # the span exporter children of "export on" (in its server CPU)
            latencies: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, process in sides.items():
                    cpu_before = cpu_seconds(process.popen.pid)
                    loop_before = loop_thread_seconds(process.popen.pid)
                    child_before = cpu_seconds(process.popen.pid, only=EXPORT_WORKER)
                    rate, ok, _ = h2load(process.port, body, requests=args.requests, **common)
                    cpu[name] += cpu_seconds(process.popen.pid) - cpu_before
                    loop_cpu[name] += loop_thread_seconds(process.popen.pid) - loop_before
                    if name == "export on":
                        child_cpu += cpu_seconds(process.popen.pid, only=EXPORT_WORKER)
                        child_cpu -= child_before
                    assert ok == args.requests, f"{name}: {ok} of {args.requests} succeeded"
                    rates[name].append(rate)
            fixed = int(args.rate * args.rate_seconds)
            starts: list[int] = []
            for _ in range(args.rounds):
                for name, process in sides.items():
                    _, ok, lat = h2load(
                        process.port,
                        body,
                        requests=fixed,
                        rps=max(1, args.rate // args.clients),
                        log_file=tmp / "h2load.log",
                        starts=starts if name == "echo" else None,
                        **common,
                    )
                    latencies[name].extend(lat)

            base_name = "1 worker" if args.compare_workers else "echo"
            base_rate = statistics.median(rates[base_name])
            base_p99 = p99(latencies[base_name])
            print(
                f"h2load -c {args.clients} -m {args.streams}, {args.requests} requests x"
                f" {args.rounds} interleaved rounds; latency at {args.rate} req/s"
                f" (--rps {args.rate // args.clients} x {args.clients} clients),"
                f" {fixed} requests x {args.rounds} rounds"
                + (f"; modelroute --workers {args.workers}" if args.workers != 1 else "")
            )
            for name in sides:
                rate = statistics.median(rates[name])
                tail = p99(latencies[name])
                each = ", ".join(f"{r:.0f}" for r in rates[name])
                p50 = statistics.median(latencies[name])
                print(
                    f"  {name:10s} {rate:8.0f} req/s (rounds {each})"
                    f"  ratio {rate / base_rate:.2f}   p50 {p50:.2f} ms"
                    f"  p99 {tail:.2f} ms  ratio {tail / base_p99:.2f}"
                    f"  server CPU {1e6 * cpu[name] / (args.requests * args.rounds):.0f} us/request"
                    + (
                        ""
                        if args.workers != 1 and name not in ("echo", "echo uvloop")
                        else f" (loop thread"
                        f" {1e6 * loop_cpu[name] / (args.requests * args.rounds):.0f})"
                    )
                )
            if starts:
                bursts = burst_sizes(starts)
                print(
                    f"  h2load --rps starts requests in bursts (echo rounds): median"
                    f" {statistics.median(bursts):.0f} requests within 200 us of each other,"
                    f" {len(bursts) / args.rounds / args.rate_seconds:.0f} bursts/s; so p99 is"
                    " about the time to serve a burst"
                )
            # Every side that exports to the sink: its spans are the sum of their decisions.
            exporting = [sides[n] for n in ("export on", "answer only", "no resolve") if n in sides]
            decisions = dropped = 0
            for exporter in exporting or [sides["1 worker"]]:
                counted, lost = scrape_decisions(exporter.admin_port)
                decisions, dropped = decisions + counted, dropped + lost
            if args.compare_workers:
                ratio = statistics.median(rates["2 workers"]) / base_rate
                print(f"  throughput 2 workers / 1 worker: {ratio:.2f}")
            else:
                print(
                    "  exporter child CPU (within export on's server CPU)"
                    f" {1e6 * child_cpu / (args.requests * args.rounds):.0f} us/span"
                )
                on_ratio = statistics.median(rates["export on"]) / base_rate
                print(
                    f"  goals (export on): throughput ratio {on_ratio:.2f} (>= 0.85:"
                    f" {'met' if on_ratio >= 0.85 else 'NOT met'}), p99 ratio"
                    f" {p99(latencies['export on']) / base_p99:.2f} (<= 1.2:"
                    f" {'met' if p99(latencies['export on']) <= 1.2 * base_p99 else 'NOT met'})"
                )
                # modelroute serves on uvloop: the same ratios against an echo on uvloop.
                same_loop = statistics.median(rates["echo uvloop"])
                print(
                    f"  against the echo on uvloop (same loop as modelroute): throughput ratio"
                    f" {statistics.median(rates['export on']) / same_loop:.2f}, p99 ratio"
                    f" {p99(latencies['export on']) / p99(latencies['echo uvloop']):.2f}"
                )
        finally:
            outputs = {p.name: p.stop() for p in reversed(processes) if p is not sink}
        sink_out = sink.stop()
    match = re.search(r'spans received: (\d+) .*"modelroute.resolve": (\d+)', sink_out)
    resolve_spans = int(match.group(2)) if match else 0
    if not args.compare_workers:  # with workers, /metrics is worker 0's alone
        print(
            f"  spans: sink received {resolve_spans} modelroute.resolve spans for {decisions}"
            f" decisions counted by the exporting servers (missing {decisions - resolve_spans});"
            f" dropped (server metric): {dropped}"
        )
    for name, output in outputs.items():
        if "Traceback" in output:
            print(f"--- {name} output ---\n{output[-3000:]}")


if __name__ == "__main__":
    main()
