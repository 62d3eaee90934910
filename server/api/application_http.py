"""The application API on the HTTP listener: OFREP (`/ofrep/v1/...`) and the Connect
protocol (`/modelroute.v1.ModelRouterService/<Method>`), both over the in-process calls
of the gRPC servicer (see `local_calls`).

Browsers on other origins may call them when `MODELROUTE_HTTP_CORS_ORIGINS` lists those
origins (comma-separated, or `*`); the admin API and dashboard never answer CORS requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.snapshot import Snapshot
from .connect_http import SERVICE_PATH, RouterConnectApp
from .local_calls import LocalRouterCalls
from .ofrep import PREFIX as OFREP_PREFIX
from .ofrep import create_ofrep_router

MAX_MESSAGE_BYTES = 1024 * 1024  # the HTTP listener's body limit too
CORS_ORIGINS_ENV: Final = "MODELROUTE_HTTP_CORS_ORIGINS"
APPLICATION_PREFIXES: Final = (SERVICE_PATH + "/", OFREP_PREFIX + "/")
# What Connect (connect-web) and OFREP clients send and need to read.
CORS_REQUEST_HEADERS: Final = (
    "content-type", "connect-protocol-version", "connect-timeout-ms", "x-api-key",
    "authorization", "accept-language", "traceparent", "tracestate", "x-user-agent",
    "x-grpc-web", "grpc-timeout", "if-none-match",
)  # fmt: skip
CORS_RESPONSE_HEADERS: Final = (
    "grpc-status", "grpc-message", "grpc-status-details-bin", "etag", "retry-after",
)  # fmt: skip


class ApplicationCors:
    """CORS for the application paths only (Starlette's CORSMiddleware, scoped by path)."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=("GET", "POST"),
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self._cors if path.startswith(APPLICATION_PREFIXES) else self._app
        await target(scope, receive, send)


def cors_origins(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [o.strip() for o in env.get(CORS_ORIGINS_ENV, "").split(",") if o.strip()]


def application_routes(
    calls: LocalRouterCalls,
    snapshot: Callable[[], Snapshot | None],
    *,
    origins: Sequence[str] | None = None,
) -> Callable[[FastAPI], None]:
    """Adds the application endpoints to the admin HTTP app (`create_admin_app(extensions=)`)."""
    allowed = cors_origins() if origins is None else list(origins)

    def install(app: FastAPI) -> None:
        app.include_router(create_ofrep_router(calls, snapshot))
        app.mount(SERVICE_PATH, RouterConnectApp(calls, read_max_bytes=MAX_MESSAGE_BYTES))
        if allowed:
            app.add_middleware(ApplicationCors, origins=allowed)

    return install
