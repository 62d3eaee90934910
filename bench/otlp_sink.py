"""A minimal OTLP/gRPC trace receiver in its own process (so the benchmark client does not
pay for decoding the server's spans). Prints its port; counts spans; prints the count on exit."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    count = 0

    async def Export(self, request: Any, context: Any) -> Any:
        Sink.count += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def main() -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"sink: serving gRPC on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"spans received: {Sink.count}", flush=True)
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
