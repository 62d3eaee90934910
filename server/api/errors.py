"""One table from domain errors to gRPC status codes, with `google.rpc` details:
ErrorInfo (machine-readable reason), BadRequest (field violations), RetryInfo (when a
retry may help) and LocalizedMessage (a sentence fit to show an end user)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from modelroute.storage.errors import StoreUnavailableError

from ..core.resolver import Cause, NoModelAvailableError

# The servicer context of a grpc.aio call (request and response types are not tracked).
ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]

ERROR_DOMAIN: Final = "modelroute.dev"
# A status travels in the response trailers, which gRPC caps at 8 KiB (soft) / 16 KiB
# (hard): past that the client gets "Stream removed" instead of the error. Messages and
# details echo client input (names, keys), so each text is clipped and the lists are
# cut to a byte budget; the message says how many entries were left out.
MAX_MESSAGE_BYTES: Final = 400
MAX_DETAIL_BYTES: Final = 160
MAX_LIST_BYTES: Final = 2400
DEFAULT_LOCALE: Final = "en"

# End-user sentences per ErrorInfo reason and language. The server picks the language
# from the request's `accept-language` metadata (English when absent or unsupported).
USER_MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {
    "NO_MODEL_AVAILABLE": {
        "en": "The AI assistant is temporarily unavailable. Please try again in a moment.",
        "ko": "AI 어시스턴트를 일시적으로 사용할 수 없습니다. 잠시 후 다시 시도해 주세요.",
    },
    "BUDGET_EXCEEDED": {
        "en": "Today's usage limit for this feature has been reached. Please try again tomorrow.",
        "ko": "이 기능의 오늘 사용 한도에 도달했습니다. 내일 다시 시도해 주세요.",
    },
    "MODEL_NOT_ALLOWED": {
        "en": "This model is not available on your plan. Please choose one from the list.",
        "ko": "현재 요금제에서는 이 모델을 사용할 수 없습니다. 목록에서 선택해 주세요.",
    },
    "CONFIG_NOT_LOADED": {
        "en": "The service is starting up. Please try again in a moment.",
        "ko": "서비스를 시작하는 중입니다. 잠시 후 다시 시도해 주세요.",
    },
}
SUPPORTED_LOCALES: Final = frozenset({"en", "ko"})


def locale_from(accept_language: str | None) -> str:
    """The best supported language of an HTTP-style `accept-language` value, e.g.
    `ko-KR,ko;q=0.9,en;q=0.8` → `ko`. Unknown or malformed → English."""
    best, best_q = DEFAULT_LOCALE, 0.0
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        language = tag.strip().split("-")[0].lower()
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        q -= position * 1e-6  # equal weights: the earlier entry wins
        if language in SUPPORTED_LOCALES and q > best_q:
            best, best_q = language, q
    return best


def request_locale(context: ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "accept-language":
            return locale_from(value if isinstance(value, str) else value.decode())
    return DEFAULT_LOCALE


@dataclass
class ServiceError(Exception):
    """A failure the client should see as a specific status with details."""

    code: grpc.StatusCode
    reason: str  # ErrorInfo.reason, UPPER_SNAKE_CASE
    message: str  # for developers
    field_violations: Sequence[tuple[str, str]] = ()
    retry_after: timedelta | None = None
    user_message: str = ""  # for end users; LocalizedMessage
    metadata: Mapping[str, str] = field(default_factory=dict)
    # PreconditionFailure: (type, subject, description), e.g. why a model may not be chosen.
    precondition_violations: Sequence[tuple[str, str, str]] = ()

    def __str__(self) -> str:
        return self.message

    def to_status(self, locale: str = DEFAULT_LOCALE) -> grpc.Status:
        metadata = {
            _clip(k, MAX_DETAIL_BYTES): _clip(v, MAX_DETAIL_BYTES) for k, v in self.metadata.items()
        }
        details: list[object] = [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata)
        ]
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in _within_budget(self.field_violations)
                    ]
                )
            )
        if self.precondition_violations:
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=t, subject=subject, description=d
                        )
                        for t, subject, d in _within_budget(self.precondition_violations)
                    ]
                )
            )
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(max(self.retry_after, timedelta(0)))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        translations = USER_MESSAGES.get(self.reason, {})
        if locale not in translations:
            locale = DEFAULT_LOCALE
        user_message = translations.get(locale) or self.user_message
        if user_message:
            details.append(error_details_pb2.LocalizedMessage(locale=locale, message=user_message))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)  # type: ignore[arg-type]
            packed.append(any_detail)
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name),
            message=_clip(self.message, MAX_MESSAGE_BYTES),
            details=packed,
        )
        return rpc_status.to_status(status)

    async def abort(self, context: ServicerContext) -> NoReturn:
        await context.abort_with_status(self.to_status(request_locale(context)))
        raise AssertionError("abort_with_status returned")  # pragma: no cover


def _clip(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes of `text` (cut on a character boundary, marked …)."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


def _within_budget(entries: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Clipped entries, as many as fit MAX_LIST_BYTES; the last one kept counts the rest."""
    kept: list[tuple[str, ...]] = []
    used = 0
    for index, entry in enumerate(entries):
        clipped = tuple(_clip(part, MAX_DETAIL_BYTES) for part in entry)
        used += sum(len(part.encode()) for part in clipped)
        if used > MAX_LIST_BYTES:
            kept.append((*clipped[:-1], f"... and {len(entries) - index} more"))
            break
        kept.append(clipped)
    return kept


Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler: TypeAlias = Callable[[Servicer, Request, ServicerContext], Awaitable[Response]]


def rpc(handler: Handler[Servicer, Request, Response]) -> Handler[Servicer, Request, Response]:
    """Answer a unary gRPC handler's errors as the call's status (with details).

    The one place where errors become gRPC statuses; handlers just raise: a
    `ServiceError` as it is, a store's `StoreUnavailableError` as UNAVAILABLE.
    """

    @functools.wraps(handler)
    async def answering(servicer: Servicer, request: Request, context: ServicerContext) -> Response:
        try:
            return await handler(servicer, request, context)
        except ServiceError as error:
            await error.abort(context)
        except StoreUnavailableError as unavailable:
            await store_unavailable(unavailable).abort(context)

    return answering


def invalid_argument(violations: Sequence[tuple[str, str]]) -> ServiceError:
    summary = "; ".join(f"{f}: {d}" for f, d in violations)
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        f"invalid request: {summary}",
        field_violations=violations,
    )


def not_found(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message)


def store_unavailable(exc: StoreUnavailableError) -> ServiceError:
    """UNAVAILABLE (retry in a second) for a store that cannot be reached."""
    if exc.backend == "etcd":
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "ETCD_UNAVAILABLE",
            f"etcd unreachable: {exc.detail}",
            retry_after=timedelta(seconds=1),
        )
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        f"the database is unavailable ({exc.detail}); nothing was read or stored, retry",
        retry_after=timedelta(seconds=1),
    )


def not_ready() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "CONFIG_NOT_LOADED",
        "no valid configuration loaded yet (is etcd reachable?)",
        retry_after=timedelta(seconds=1),
        user_message="The service is starting up. Please try again in a moment.",
    )


def unimplemented(rpc: str, capability: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        "NOT_IMPLEMENTED",
        f"{rpc} is not available in this modelroute version yet ({capability}).",
    )


def no_model_available(exc: NoModelAvailableError, now: datetime) -> ServiceError:
    """RESOURCE_EXHAUSTED: nothing in the chain can serve; when to retry, and why."""
    retry_after = exc.retry_at - now if exc.retry_at is not None else None
    causes = {s.unavailable.cause for s in exc.skipped}
    budget_only = causes == {Cause.BUDGET}
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED" if budget_only else "NO_MODEL_AVAILABLE",
        str(exc),
        retry_after=retry_after,
        user_message="The AI assistant is temporarily unavailable. Please try again later.",
        metadata={
            "context": exc.context,
            "skipped": ",".join(f"{s.model_id}:{s.unavailable.cause.name}" for s in exc.skipped),
            # Which limits: the distinct details (provider limit, budget, cooldown end).
            "limits": "; ".join(
                dict.fromkeys(s.unavailable.detail for s in exc.skipped if s.unavailable.detail)
            ),
            **({"retry_at": exc.retry_at.isoformat()} if exc.retry_at is not None else {}),
        },
    )


def decode_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> dict[str, object]:
    """Client-side helper (tests, CLI): the typed details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    found: dict[str, object] = {}
    if status is None:
        return found
    for detail in status.details:
        for detail_type in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.LocalizedMessage,
            error_details_pb2.PreconditionFailure,
        ):
            if detail.Is(detail_type.DESCRIPTOR):
                message = detail_type()
                detail.Unpack(message)
                found[detail_type.DESCRIPTOR.name] = message
    return found
