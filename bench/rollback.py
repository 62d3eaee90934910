"""Rollback latency with two replicas (one process, real embedded etcd, SQLite): how long a
RollbackConfig takes, and how soon after it returns both replicas serve the earlier
answer. Baseline in the same run: a plain etcd put of the same key until both replicas
serve it. Run: `.venv/bin/python bench/rollback.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.api.config_apply import load_config_file
from modelroute.server.app import DEFAULT_BOOTSTRAP, ModelrouteServer, ServeOptions
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import connect, parse_endpoints, read_prefix, write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc

PREFIX = "/bench-rollback/"
KEY = "overrides/rag.answer"


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        etcd_server = EmbeddedEtcd(Path(tmp) / "etcd", client_port=free_port())
        etcd_server.start()
        etcd = connect(parse_endpoints(etcd_server.endpoint))
        await write_changes(etcd, PREFIX, dict(load_config_file(DEFAULT_BOOTSTRAP)), 0, [])
        servers = []
        for index in range(2):
            options = ServeOptions(
                port=0,
                etcd_endpoints=etcd_server.endpoint,
                etcd_prefix=PREFIX,
                database_url=f"sqlite:///{Path(tmp) / 'db.sqlite'}",
                data_dir=Path(tmp) / f"replica{index}",
                seed=False,
            )
            server = ModelrouteServer(options)
            await server.start()
            await server.config.wait_ready(timeout=10)
            servers.append(server)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
        routers = [router_pb2_grpc.ModelRouterServiceStub(c) for c in channels]
        admin = admin_pb2_grpc.AdminServiceStub(channels[0])

        async def until_both(model: str) -> None:
            request = router_pb2.ResolveModelRequest(context="rag.answer")
            while True:
                answers = await asyncio.gather(*(r.ResolveModel(request) for r in routers))
                if all(a.model_id == model for a in answers):
                    return
                await asyncio.sleep(0.0005)

        original = (
            await routers[0].ResolveModel(router_pb2.ResolveModelRequest(context="rag.answer"))
        ).model_id
        put_ms, rpc_ms, served_ms = [], [], []
        for n in range(rounds):
            good, _ = await read_prefix(etcd, PREFIX)
            await asyncio.sleep(0.05)  # let the history record `good` before going back to it
            started = time.perf_counter()
            await write_changes(
                etcd, PREFIX, {KEY: json.dumps({"model": "gpt-4o"}).encode()}, 0, []
            )
            await until_both("gpt-4o")
            put_ms.append(1000 * (time.perf_counter() - started))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await admin.RollbackConfig(
                admin_pb2.RollbackConfigRequest(revision=good, note=f"round {n}")
            )
            returned = time.perf_counter()
            await until_both(original)
            done = time.perf_counter()
            rpc_ms.append(1000 * (returned - started))
            served_ms.append(1000 * (done - started))

        def summary(values: list[float]) -> str:
            ordered = sorted(values)
            p99 = ordered[int(0.99 * (len(ordered) - 1))]
            return f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms"

        print(f"{rounds} rounds, two replicas")
        print(f"baseline etcd put -> both replicas serve it: {summary(put_ms)}")
        print(f"RollbackConfig RPC (read history, diff, validate, guarded txn): {summary(rpc_ms)}")
        print(
            f"rollback requested -> both replicas serve the earlier answer: {summary(served_ms)}"
            f" ({statistics.median(served_ms) / statistics.median(put_ms):.1f}x baseline)"
        )
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop()
        await etcd.close()
        etcd_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(parser.parse_args().rounds))
