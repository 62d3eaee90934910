"""A replica as an operating-system process: it serves until SIGTERM / SIGINT (or, as a
worker of `serve --workers N`, until its supervising parent is gone), then drains."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Final

from modelroute.storage.instance_file import InstanceInfo, dial_address, write_instance

from .app import ModelrouteServer
from .options import ServeOptions

log = logging.getLogger("modelroute.server")
EVENT_LOOPS: Final = ("uvloop", "asyncio")


def check_event_loop(event_loop: str) -> None:
    """ValueError (worded for `serve --event-loop`) unless `event_loop` is one we run."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}")


def run_event_loop(main: Coroutine[Any, Any, None], event_loop: str = "uvloop") -> None:
    """Run `main` on the chosen event loop. uvloop (libuv, C) runs grpc.aio's callbacks and
    task steps in C: the asyncio share of every call costs less (bench/hotpath.py shows the
    same ~15-20% on a bare echo server); `asyncio` is the standard library's loop."""
    check_event_loop(event_loop)
    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


async def serve_until_signalled(
    options: ServeOptions, on_serving: Callable[[ModelrouteServer], None] | None = None
) -> None:
    server = ModelrouteServer(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if options.parent_pid is not None:
        watchdog = asyncio.create_task(_stop_when_orphaned(options.parent_pid, stop))
    try:
        await server.start()
        # Everything built at startup lives as long as the process: out of the collector's
        # sight, a full collection later scans only what came after (it scanned all of it:
        # ~90 ms pauses on this codebase, the worst latency outliers a replica had).
        gc.collect()
        gc.freeze()
        print(f"modelroute: serving gRPC on {options.host}:{server.port}", flush=True)
        if server.admin_http is not None:
            print(
                f"modelroute: dashboard at http://{options.host}:{server.admin_port}/", flush=True
            )
        if on_serving is not None:
            on_serving(server)  # e.g. the CLI publishes <data_dir>/server.json
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await server.stop()
        if options.parent_pid is not None:
            watchdog.cancel()


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    # Polled: no event says "my parent died" (prctl PDEATHSIG would, but Linux-only).
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    log.error("supervising process %d is gone: shutting down", parent_pid)
    stop.set()


def publish_instance(server: ModelrouteServer, pid: int | None = None) -> None:
    """Write `<data_dir>/server.json` once `server` serves: the other commands find it there
    (cli/discovery.py). `pid`: the process that owns the file and removes it when it stops
    (this one; for `serve --workers`, the supervising parent: worker 0 publishes for it)."""
    options = server.options
    admin = server.admin_port if server.admin_http is not None else 0
    embedded = server.embedded_etcd
    write_instance(
        options.data_dir,
        InstanceInfo(
            pid=os.getpid() if pid is None else pid,
            grpc_address=dial_address(options.host, server.port),
            tls=options.tls_cert is not None,
            etcd_endpoints=options.etcd_endpoints or (embedded.endpoint if embedded else ""),
            etcd_prefix=options.etcd_prefix,
            admin_url=f"http://{dial_address(options.host, admin)}/" if admin else "",
        ),
    )
