"""ReportUsage ingestion: reports/s through gRPC into the database, spans exported over OTLP
to a sink process, then every acknowledged report counted in the table.

Reports go in batches as the Python SDK sends them (`report_batch_size`, default 100) from
`--senders` concurrent callers. Requests are built and serialised before the clock starts,
so the client spends its CPU on gRPC only (the client shares the 2 cores with the server
and the sink). Reports vary like real traffic: 5 models, 5 contexts, ~5% errors, log-normal
latencies, so rollups see many keys and latency buckets.

Run: `.venv/bin/python bench/ingest.py` (SQLite file; PostgreSQL with
MODELROUTE_BENCH_DATABASE_URL=postgresql://...; `--no-export` to isolate span export).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.app import DEFAULT_BOOTSTRAP
from modelroute.storage.database import create_engine_for
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import connect, parse_endpoints, write_changes
from modelroute.v1 import router_pb2, types_pb2
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis import database_for
from run import NO_LIMITS, ROOT, start_process, wait_serving

GOAL = 10_000
MODELS = ["gemini-3-flash-preview", "gemini-3-pro-preview", "gpt-4o", "gpt-4o-mini"]
CONTEXTS = ["rag.answer", "premium.answer", "reranker", "template_gates", "example_miner"]
METHOD = "/modelroute.v1.ModelRouterService/ReportUsage"


def build_requests(count: int, batch: int, tag: str) -> list[bytes]:
    rng = random.Random(1)
    requests = []
    for b in range(count):
        reports = [
            router_pb2.UsageReport(
                report_id=f"{tag}-{b}-{k}",
                context=CONTEXTS[rng.randrange(5)],
                model_id=MODELS[rng.randrange(4)],
                user=types_pb2.User(id=f"user-{rng.randrange(50_000)}", tier="free"),
                input_tokens=rng.randrange(100, 4000),
                output_tokens=rng.randrange(10, 800),
                latency_ms=int(rng.lognormvariate(6, 0.5)),
                outcome=types_pb2.OUTCOME_OK if rng.random() > 0.05 else types_pb2.OUTCOME_TIMEOUT,
            )
            for k in range(batch)
        ]
        requests.append(router_pb2.ReportUsageRequest(reports=reports).SerializeToString())
    return requests


async def ingest(
    address: str, requests: list[bytes], seconds: float, senders: int
) -> tuple[float, list[str]]:
    acknowledged: list[str] = []
    accepted = router_pb2.REPORT_STATUS_ACCEPTED
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            METHOD, response_deserializer=router_pb2.ReportUsageResponse.FromString
        )
        queue = list(reversed(requests))
        deadline = time.perf_counter() + seconds

        async def sender() -> None:
            while queue and time.perf_counter() < deadline:
                reply = await call(queue.pop())
                acknowledged.extend(r.report_id for r in reply.results if r.status == accepted)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        elapsed = time.perf_counter() - started
    return elapsed, acknowledged


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_ids(url: str, tag: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT report_id FROM llm_usage_logs WHERE report_id LIKE :p"),
                {"p": f"{tag}-%"},
            )
            return {r[0] for r in rows}
    finally:
        engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=32, help="concurrent callers (SDKs)")
    parser.add_argument("--batch", type=int, default=100, help="reports per ReportUsage call")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--profile", metavar="SVG", help="py-spy record the server into SVG")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    # Enough requests for twice the goal over the whole run; the run ends at --seconds.
    count = int(2 * GOAL * args.seconds / args.batch) + args.senders
    requests = build_requests(count, args.batch, tag)
    sink, sink_port = start_process([sys.executable, str(ROOT / "bench" / "otlp_sink.py")], {})
    profiler = None
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedEtcd(Path(tmp) / "etcd", client_port=free_port()) as etcd,
    ):
        prefix = "/modelroute-bench/"
        client = connect(parse_endpoints(etcd.endpoint))
        await write_changes(
            client, prefix, dict(load_config_file(DEFAULT_BOOTSTRAP)) | NO_LIMITS, 0, []
        )
        await client.close()
        # PostgreSQL: a fresh database on that server (dropped afterwards), like analysis.py.
        url, drop = database_for(os.environ.get("MODELROUTE_BENCH_DATABASE_URL"), Path(tmp), 0)
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
                url,
                "--data-dir",
                str(Path(tmp) / "d"),
            ],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            | ({"OTEL_TRACES_EXPORTER": "none"} if args.no_export else {}),
        )
        try:
            await wait_serving(f"127.0.0.1:{port}")
            if args.profile:
                profiler = subprocess.Popen(  # noqa: ASYNC220 - a bench, before the clock
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-o",
                        args.profile,
                        *(["--format", "raw"] if args.profile.endswith(".txt") else []),
                        "--pid",
                        str(server.pid),
                        "--duration",
                        str(int(args.seconds)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)  # py-spy attaching
            server_cpu = cpu_seconds(server.pid)
            client_cpu = time.process_time()
            elapsed, acknowledged = await ingest(
                f"127.0.0.1:{port}", requests, args.seconds, args.senders
            )
            client_cpu = time.process_time() - client_cpu
            server_cpu = cpu_seconds(server.pid) - server_cpu
        finally:
            server.terminate()
            server.wait(60)
            if profiler is not None:
                profiler.wait(60)
        stored = stored_ids(url, tag)
        drop()
    sink_cpu = cpu_seconds(sink.pid)
    sink.terminate()
    sink_out, _ = sink.communicate(timeout=30)
    spans = re.search(r"spans received: (\d+)", sink_out)
    missing = len(set(acknowledged) - stored)
    rate = len(acknowledged) / elapsed
    backend = url.split(":")[0].split("+")[0]
    print(
        f"ReportUsage ingestion ({backend}, batches of {args.batch}, {args.senders} senders,"
        f" span export {'off' if args.no_export else 'on'}): {rate:,.0f} reports/s"
        f" -> {rate / GOAL:.2f}x the goal of {GOAL:,}/s; acknowledged {len(acknowledged):,},"
        f" missing afterwards {missing}; spans at the sink: {spans.group(1) if spans else '?'}"
    )
    print(
        f"CPU during the run ({elapsed:.1f} s wall): server {server_cpu:.1f} s,"
        f" client {client_cpu:.1f} s; sink over its life {sink_cpu:.1f} s;"
        f" server CPU per 1,000 reports {1e6 * server_cpu / max(len(acknowledged), 1):.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
