"""Following WatchConfig: every new config revision reaches the client's cache."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from modelroute.v1 import router_pb2, router_pb2_grpc

logger = logging.getLogger("modelroute.client")


async def follow_config(
    stub: router_pb2_grpc.ModelRouterServiceStub,
    metadata: tuple[tuple[str, str], ...] | None,
    on_revision: Callable[[int], None],
    on_live: Callable[[bool], None],
) -> None:
    """Call `on_revision` for each revision the server announces and `on_live` when the
    stream comes up or goes down; reconnect with backoff (cached entries still expire by
    their TTL meanwhile). Returns only when the server has no WatchConfig.
    """
    backoff = 0.05
    while True:
        try:
            watch = stub.WatchConfig(router_pb2.WatchConfigRequest(), metadata=metadata)
            async for message in watch:
                backoff = 0.05
                on_live(True)
                on_revision(message.config_revision)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                logger.info("modelroute server has no WatchConfig; caching by TTL only")
                return
            logger.debug("modelroute WatchConfig: %s; reconnecting", error.code().name)
        on_live(False)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
