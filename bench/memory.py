"""Memory under a long mixed load: does a replica's RSS stay flat?

One modelroute process (spans exported over OTLP to a sink process), loaded for
`--duration` seconds (default 600) with: ResolveModel calls from several callers, ReportUsage
batches carrying the decisions' ids, and a config change every second (a context's model
flips, written to etcd). The server's RSS (and its span exporter child's) is sampled every
`--sample` seconds; the baseline is the RSS once the warm-up (`--warm-up`, default 60 s) is
over. Goal: the last RSS within +10% of that baseline.

Run: `.venv/bin/python bench/memory.py` (`--duration 120` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hotpath import ROOT, Process, start, start_modelroute, wait_serving


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def run_load(
    address: str, etcd_endpoint: str, prefix: str, duration: float, sample: float, pid: int
) -> tuple[list[tuple[float, float, float]], dict[str, int]]:
    from modelroute.storage.etcd import connect, parse_endpoints, write_changes
    from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

    counts = {"resolves": 0, "reports": 0, "changes": 0, "errors": 0}
    deadline = time.monotonic() + duration
    series: list[tuple[float, float, float]] = []
    started = time.monotonic()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        decisions: list[str] = []

        async def resolver(index: int) -> None:
            while time.monotonic() < deadline:
                user = types_pb2.User(
                    id=f"user-{index}-{counts['resolves'] % 5000}", tier="premium"
                )
                try:
                    reply = await stub.ResolveModel(
                        router_pb2.ResolveModelRequest(context="rag.answer", user=user)
                    )
                    counts["resolves"] += 1
                    if len(decisions) < 1000:
                        decisions.append(reply.decision_id)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                await asyncio.sleep(0.002)

        async def reporter(index: int) -> None:
            batch = 0
            while time.monotonic() < deadline:
                ids = list(decisions)
                decisions.clear()
                reports = [
                    router_pb2.UsageReport(
                        report_id=f"m{index}-{batch}-{k}",
                        context="rag.answer",
                        model_id="gpt-4o-mini",
                        input_tokens=800,
                        output_tokens=200,
                        latency_ms=900,
                        outcome=types_pb2.OUTCOME_OK,
                        decision_id=ids[k] if k < len(ids) else "",
                    )
                    for k in range(50)
                ]
                try:
                    await stub.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
                    counts["reports"] += len(reports)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                batch += 1
                await asyncio.sleep(0.05)

        async def changer() -> None:
            client = connect(parse_endpoints(etcd_endpoint))
            try:
                while time.monotonic() < deadline:
                    model = "gpt-4o" if counts["changes"] % 2 else "gpt-4o-mini"
                    value = json.dumps({"model": model, "fallbacks": []}).encode()
                    await write_changes(client, prefix, {"contexts/bench.memory": value}, 0, [])
                    counts["changes"] += 1
                    await asyncio.sleep(1.0)
            finally:
                await client.close()

        async def sampler() -> None:
            while time.monotonic() < deadline:
                exporter = sum(rss_mib(c) for c in children(pid))
                series.append((time.monotonic() - started, rss_mib(pid), exporter))
                await asyncio.sleep(sample)

        await asyncio.gather(
            *(resolver(i) for i in range(8)), reporter(0), reporter(1), changer(), sampler()
        )
    return series, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before baseline")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()

    from modelroute.server.api.config_apply import load_config_file
    from modelroute.server.app import DEFAULT_BOOTSTRAP
    from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
    from modelroute.storage.etcd import connect, parse_endpoints, write_changes

    sink = start("sink", [sys.executable, str(ROOT / "bench" / "otlp_sink.py")], {})
    processes: list[Process] = [sink]
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        EmbeddedEtcd(Path(tmp_name) / "etcd", client_port=free_port()) as etcd,
    ):
        tmp = Path(tmp_name)
        prefix = "/modelroute-memory/"

        async def seed() -> None:
            client = connect(parse_endpoints(etcd.endpoint))
            no_limits = {f"providers/{p}": b"{}" for p in ("google", "openai", "anthropic")}
            await write_changes(
                client, prefix, dict(load_config_file(DEFAULT_BOOTSTRAP)) | no_limits, 0, []
            )
            await client.close()

        asyncio.run(seed())
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
        server = start_modelroute("mem", tmp, etcd.endpoint, prefix, 1, env)
        processes.append(server)
        try:
            wait_serving(server.port)
            series, counts = asyncio.run(
                run_load(
                    f"127.0.0.1:{server.port}",
                    etcd.endpoint,
                    prefix,
                    args.duration,
                    args.sample,
                    server.popen.pid,
                )
            )
        finally:
            for process in reversed(processes):
                process.stop()
    print(
        f"mixed load for {args.duration:.0f} s: {counts['resolves']} resolves,"
        f" {counts['reports']} reports, {counts['changes']} config changes,"
        f" {counts['errors']} errors"
    )
    print("   t (s)   server RSS (MiB)   exporter RSS (MiB)")
    for at, server_rss, exporter_rss in series:
        print(f"  {at:6.0f}   {server_rss:16.1f}   {exporter_rss:18.1f}")
    after_warm_up = [s for s in series if s[0] >= args.warm_up]
    if not after_warm_up:
        print("run shorter than the warm-up: no verdict")
        return
    base, last = after_warm_up[0], series[-1]
    peak = max(s[1] for s in after_warm_up)
    ratio = last[1] / base[1]
    print(
        f"server RSS after warm-up {base[1]:.1f} MiB, last {last[1]:.1f} MiB (peak {peak:.1f})"
        f" -> {100 * (ratio - 1):+.1f}% (goal <= +10%: {'met' if ratio <= 1.10 else 'NOT met'});"
        f" exporter {base[2]:.1f} -> {last[2]:.1f} MiB"
    )


if __name__ == "__main__":
    main()
