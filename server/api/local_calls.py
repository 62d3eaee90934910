"""ModelRouterService calls made inside the process, for the HTTP transports (Connect,
OFREP).

Each call runs through the very same `Authorizer` and servicer method as a call on
the gRPC port: the authorizer wraps a real `grpc.RpcMethodHandler`, and the handler runs
with a small stand-in for `grpc.aio.ServicerContext` that turns `abort_with_status` into a
`CallFailedError` carrying the gRPC code, message and `google.rpc` details. So auth, input
validation, the decision path (span, quota admission, decision id) and the error details
cannot drift apart between transports: there is one implementation.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from modelroute.v1 import router_pb2

from .auth import API_KEY_HEADER, ROUTER_PREFIX, Authorizer, parse_bearer

SERVICE: Any = router_pb2.DESCRIPTOR.services_by_name["ModelRouterService"]
# Request headers that mean the same on HTTP as in gRPC metadata.
FORWARDED_HEADERS = ("x-api-key", "accept-language", "traceparent", "tracestate")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
DetailT = TypeVar("DetailT", bound=Message)


@dataclass
class CallFailedError(Exception):
    """A call ended with a gRPC status other than OK (what the gRPC port would send)."""

    code: grpc.StatusCode
    message: str
    details: tuple[any_pb2.Any, ...] = ()

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def detail(self, detail_type: type[DetailT]) -> DetailT | None:
        for packed in self.details:
            if packed.Is(detail_type.DESCRIPTOR):  # type: ignore[arg-type]
                found = detail_type()
                packed.Unpack(found)
                return found
        return None

    @property
    def reason(self) -> str:
        info = self.detail(error_details_pb2.ErrorInfo)
        return str(info.reason) if info is not None else str(self.code.name)

    @property
    def retry_after_seconds(self) -> float | None:
        retry = self.detail(error_details_pb2.RetryInfo)
        return retry.retry_delay.ToTimedelta().total_seconds() if retry is not None else None


def _failure_from_status(status: grpc.Status) -> CallFailedError:
    for key, value in status.trailing_metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            decoded = status_pb2.Status.FromString(value)
            return CallFailedError(status.code, decoded.message, tuple(decoded.details))
    return CallFailedError(status.code, status.details or "")


class LocalServicerContext:
    """What the servicers and the authorizer use of `grpc.aio.ServicerContext`."""

    def __init__(self, metadata: Sequence[tuple[str, str]], peer: str, deadline: float | None):
        self._metadata = tuple(metadata)
        self._peer = peer
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _failure_from_status(status)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        raise CallFailedError(code, details)

    def raise_if_set(self) -> None:
        """A handler may set a code instead of aborting (grpc's other error style)."""
        if self._code is not None and self._code is not grpc.StatusCode.OK:
            raise CallFailedError(self._code, self._details)


def metadata_from_headers(
    headers: Mapping[str, str], *, bearer_is_api_key: bool
) -> list[tuple[str, str]]:
    """gRPC metadata for an HTTP request: the headers that mean the same thing, and, for
    HTTP callers used to it, `Authorization: Bearer <key>` as the application API key."""
    lowered = {k.lower(): v for k, v in headers.items()}
    metadata = [(name, lowered[name]) for name in FORWARDED_HEADERS if lowered.get(name)]
    if bearer_is_api_key and not lowered.get(API_KEY_HEADER):
        key = parse_bearer(lowered.get("authorization"))
        if key:
            metadata.append((API_KEY_HEADER, key))
    return metadata


def message_class(descriptor: Any) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


class LocalRouterCalls:
    """ModelRouterService methods by name, called in process through the authorizer."""

    def __init__(self, servicer: Any, auth: Authorizer | None) -> None:
        self._auth = auth
        self.methods: dict[str, Any] = {m.name: m for m in SERVICE.methods}
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name, method in self.methods.items():
            behaviour = getattr(servicer, name)
            request_class = message_class(method.input_type)
            make: Callable[..., grpc.RpcMethodHandler] = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            self._handlers[name] = make(
                behaviour,
                request_deserializer=request_class.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

    def _handler(self, method: str, metadata: tuple[tuple[str, str], ...]) -> Any:
        handler = self._handlers[method]
        if self._auth is None:
            return handler
        return self._auth.authorize(ROUTER_PREFIX + method, metadata, handler)

    async def unary(
        self,
        method: str,
        request: Message,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        peer: str = "",
        timeout: float | None = None,
    ) -> Any:
        """The response message, or CallFailedError with what the gRPC port would answer."""
        context = _context(metadata, peer, timeout)
        handler = self._handler(method, context.invocation_metadata())
        response = await handler.unary_unary(request, context)
        context.raise_if_set()
        return response

    async def server_stream(
        self,
        method: str,
        request: Message,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        peer: str = "",
    ) -> AsyncIterator[Any]:
        context = _context(metadata, peer, None)
        handler = self._handler(method, context.invocation_metadata())
        async for item in handler.unary_stream(request, context):
            yield item
        context.raise_if_set()


def _context(
    metadata: Sequence[tuple[str, str]], peer: str, timeout: float | None
) -> LocalServicerContext:
    deadline = None if timeout is None else time.monotonic() + timeout
    return LocalServicerContext(metadata, peer, deadline)
