"""Baseline for the ResolveModel benchmark: a grpc.aio server answering ResolveModel with a
fixed, pre-serialised response of the real size. Same stack, zero work.

`ECHO_EVENT_LOOP=uvloop` runs it on uvloop (modelroute's default loop), else on asyncio's."""

from __future__ import annotations

import asyncio
import os

import grpc
from modelroute.v1 import router_pb2, router_pb2_grpc

RESPONSE = router_pb2.ResolveModelResponse.FromString(
    bytes.fromhex(os.environ["ECHO_RESPONSE_HEX"])
)


class Echo(router_pb2_grpc.ModelRouterServiceServicer):
    async def ResolveModel(self, request: object, context: object) -> object:  # type: ignore[override]
        return RESPONSE


async def main() -> None:
    server = grpc.aio.server()
    router_pb2_grpc.add_ModelRouterServiceServicer_to_server(Echo(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo: serving gRPC on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if os.environ.get("ECHO_EVENT_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
