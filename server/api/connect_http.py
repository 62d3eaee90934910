"""Every `modelroute.v1.ModelRouterService` RPC over plain HTTP: the Connect protocol
(JSON or binary protobuf; unary POST or GET, server streaming for WatchConfig), so curl,
browsers and edge runtimes can call it without gRPC.

The protocol itself comes from `connectrpc` (the `connect-python` distribution, which
speaks Connect, gRPC and gRPC-Web over ASGI with google.protobuf messages). Its endpoints
call the gRPC servicer in process through `LocalRouterCalls`, i.e. through the same
authorizer and handlers as the gRPC port: a bad request gets the same code, message and
`google.rpc` details (ErrorInfo, BadRequest, RetryInfo, LocalizedMessage) on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint

from .local_calls import (
    SERVICE,
    CallFailedError,
    LocalRouterCalls,
    message_class,
    metadata_from_headers,
)

SERVICE_PATH: Final = "/" + SERVICE.full_name
# Reads without side effects may also be sent as GET (cacheable by HTTP caches).
NO_SIDE_EFFECTS: Final = frozenset({"ListModels", "GetUserPreference"})


def connect_error(failure: CallFailedError) -> ConnectError:
    """The gRPC status as a Connect error: same code, message and details (as Any)."""
    return ConnectError(Code[failure.code.name], failure.message, failure.details)


def _call_metadata(ctx: RequestContext[Any, Any]) -> list[tuple[str, str]]:
    return metadata_from_headers(dict(ctx.request_headers().items()), bearer_is_api_key=True)


def _timeout_seconds(ctx: RequestContext[Any, Any]) -> float | None:
    remaining = ctx.timeout_ms()
    return None if remaining is None else remaining / 1000.0


def _endpoints(calls: LocalRouterCalls) -> Mapping[str, Any]:
    endpoints: dict[str, Any] = {}
    for name, method in calls.methods.items():
        info: MethodInfo[Any, Any] = MethodInfo(
            name=name,
            service_name=SERVICE.full_name,
            input=message_class(method.input_type),
            output=message_class(method.output_type),
            idempotency_level=(
                IdempotencyLevel.NO_SIDE_EFFECTS
                if name in NO_SIDE_EFFECTS
                else IdempotencyLevel.UNKNOWN
            ),
        )
        path = f"{SERVICE_PATH}/{name}"
        if method.server_streaming:
            endpoints[path] = Endpoint.server_stream(info, _streaming(calls, name))
        else:
            endpoints[path] = Endpoint.unary(info, _unary(calls, name))
    return endpoints


def _unary(calls: LocalRouterCalls, name: str) -> Any:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        try:
            return await calls.unary(
                name,
                request,
                _call_metadata(ctx),
                peer=ctx.client_address() or "",
                timeout=_timeout_seconds(ctx),
            )
        except CallFailedError as failure:
            raise connect_error(failure) from None

    return call


def _streaming(calls: LocalRouterCalls, name: str) -> Any:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in calls.server_stream(
                name, request, _call_metadata(ctx), peer=ctx.client_address() or ""
            ):
                yield item
        except CallFailedError as failure:
            raise connect_error(failure) from None

    return call


class RouterConnectApp(ConnectASGIApplication[LocalRouterCalls]):
    """ASGI app serving `/modelroute.v1.ModelRouterService/<Method>`."""

    def __init__(self, calls: LocalRouterCalls, *, read_max_bytes: int) -> None:
        super().__init__(service=calls, endpoints=_endpoints, read_max_bytes=read_max_bytes)

    @property
    def path(self) -> str:
        return str(SERVICE_PATH)
