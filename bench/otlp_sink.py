"""A minimal OTLP/gRPC trace receiver in its own process (so the benchmark client does not
pay for decoding the server's spans). Prints its port; counts spans (in total and per span
name); prints the counts on SIGUSR1 and on exit (SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    count = 0
    by_name: Counter[str] = Counter()

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                Sink.count += len(scope_spans.spans)
                Sink.by_name.update(span.name for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def report() -> None:
    print(f"spans received: {Sink.count} {json.dumps(dict(Sink.by_name))}", flush=True)


async def main() -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"sink: serving gRPC on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, report)
    await stop.wait()
    report()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
