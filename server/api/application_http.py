"""The application API on the HTTP listener: OFREP (`/ofrep/v1/...`) and the Connect
protocol (`/modelroute.v1.ModelRouterService/<Method>`), both over the in-process calls
of the gRPC servicer (see `local_calls`)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from modelroute.server.api.connect_http import SERVICE_PATH, RouterConnectApp
from modelroute.server.api.local_calls import LocalRouterCalls
from modelroute.server.api.ofrep import create_ofrep_router
from modelroute.server.core.snapshot import Snapshot

MAX_MESSAGE_BYTES = 1024 * 1024  # the HTTP listener's body limit too


def application_routes(
    calls: LocalRouterCalls, snapshot: Callable[[], Snapshot | None]
) -> Callable[[FastAPI], None]:
    """Adds the application endpoints to the admin HTTP app (`create_admin_app(extensions=)`)."""

    def install(app: FastAPI) -> None:
        app.include_router(create_ofrep_router(calls, snapshot))
        app.mount(SERVICE_PATH, RouterConnectApp(calls, read_max_bytes=MAX_MESSAGE_BYTES))

    return install
