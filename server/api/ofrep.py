"""OpenFeature Remote Evaluation Protocol (OFREP) on the HTTP listener: any OpenFeature SDK
with an OFREP provider (Java, .NET, Go, JS, Python, ...) asks "which model for this
context and user?" as a string flag.

- flag key = context; evaluation context `targetingKey` = user id, `tier` = tier, every
  other field = an attribute (scalars only);
- value = model id; variant = the experiment arm, else the reason (e.g. CONTEXT_DEFAULT);
  reason = `semconv.OPENFEATURE_REASONS`; metadata = decisionId, provider, configRevision,
  fallbacks (comma-separated), modelrouteReason, and fallbackCause / warnings if any.

Each evaluation is a `ResolveModel` call through `LocalRouterCalls`: same auth (API key in
`X-API-Key` or `Authorization: Bearer`), validation, quota admission, decision id and span
as the gRPC port. Only the envelope differs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from google.rpc import error_details_pb2
from modelroute.v1 import router_pb2, types_pb2

from ..core.snapshot import Snapshot
from ..telemetry.semconv import openfeature_reason
from .local_calls import (
    CallFailedError,
    LocalRouterCalls,
    metadata_from_headers,
)

PREFIX: Final = "/ofrep/v1"
ANONYMOUS_WARNING: Final = "no targetingKey: evaluated as an anonymous user"


class OfrepError(Exception):
    def __init__(
        self,
        status: int,
        error_code: str | None,
        details: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(details)
        self.status, self.error_code, self.details = status, error_code, details
        self.headers = dict(headers or {})

    def body(self, key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"errorDetails": self.details}
        if self.error_code is not None:
            body["errorCode"] = self.error_code
        if key is not None:
            body["key"] = key
        return body

    def response(self, key: str | None) -> JSONResponse:
        return JSONResponse(self.body(key), status_code=self.status, headers=self.headers)


def _reason_name(number: int) -> str:
    return types_pb2.Reason.Name(number).removeprefix("REASON_")  # type: ignore[arg-type]


def parse_evaluation_context(body: bytes) -> tuple[router_pb2.ResolveModelRequest, bool]:
    """The ResolveModel request (without the context name) for an OFREP request body, and
    whether a targeting key was given. 400 PARSE_ERROR / INVALID_CONTEXT otherwise."""
    try:
        payload = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise OfrepError(400, "PARSE_ERROR", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise OfrepError(400, "PARSE_ERROR", 'the request body must be a JSON object {"context"}')
    context = payload.get("context") or {}
    if not isinstance(context, dict):
        raise OfrepError(400, "INVALID_CONTEXT", "context must be a JSON object")
    request = router_pb2.ResolveModelRequest()
    problems = []
    for name, value in context.items():
        if name in ("targetingKey", "tier") and not isinstance(value, str):
            problems.append(f"{name} must be a string")
        elif isinstance(value, bool):
            request.attributes[name] = "true" if value else "false"
        elif isinstance(value, str | int | float) and not (
            isinstance(value, float) and not math.isfinite(value)
        ):
            text = str(value)
            if name == "targetingKey":
                request.user.id = text
            elif name == "tier":
                request.user.tier = text
            else:
                request.attributes[name] = text
        elif value is not None:
            problems.append(f"{name}: only strings, numbers and booleans are supported")
    if problems:
        raise OfrepError(400, "INVALID_CONTEXT", "; ".join(problems))
    return request, bool(request.user.id)


def _http_failure(failure: CallFailedError) -> OfrepError:
    """What the gRPC port would answer, in OFREP's terms."""
    code = failure.code
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        bad = failure.detail(error_details_pb2.BadRequest)
        if bad is not None and {v.field for v in bad.field_violations} == {"context"}:
            # Only the flag key is wrong: it cannot name a context.
            return OfrepError(404, "FLAG_NOT_FOUND", failure.message)
        return OfrepError(400, "INVALID_CONTEXT", failure.message)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return OfrepError(401, None, failure.message, {"WWW-Authenticate": "Bearer"})
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return OfrepError(403, None, failure.message)
    retry = failure.retry_after_seconds
    headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None else {}
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OfrepError(429, "GENERAL", f"{failure.reason}: {failure.message}", headers)
    if code is grpc.StatusCode.UNAVAILABLE:
        return OfrepError(503, "GENERAL", failure.message, headers)
    return OfrepError(500, "GENERAL", f"{code.name}: {failure.message}")


def _success(
    key: str, decision: router_pb2.ResolveModelResponse, anonymous: bool
) -> dict[str, Any]:
    reason = _reason_name(decision.reason)
    metadata: dict[str, str | bool | float] = {
        "decisionId": decision.decision_id,
        "provider": decision.provider,
        "configRevision": str(decision.config_revision),
        "fallbacks": ",".join(decision.fallback_model_ids),
        "modelrouteReason": reason,
    }
    if decision.experiment_id:
        metadata["experimentId"] = decision.experiment_id
    if decision.HasField("fallback"):
        metadata["fallbackFrom"] = decision.fallback.from_model_id
        metadata["fallbackCause"] = types_pb2.FallbackCause.Name(decision.fallback.cause)
    warnings = list(decision.warnings)
    if anonymous:
        warnings.insert(0, ANONYMOUS_WARNING)
        metadata["anonymous"] = True
    if warnings:
        metadata["warnings"] = "; ".join(warnings)
    return {
        "key": key,
        "value": decision.model_id,
        "reason": openfeature_reason(reason),
        "variant": decision.variant_id or reason,
        "metadata": metadata,
        "cacheable": decision.cache_ttl.ToTimedelta().total_seconds() > 0,
    }


def _etag(flags: list[dict[str, Any]]) -> str:
    """Decision ids are fresh tokens on every call; the answers are what a cache keys on."""
    stable = [
        {
            **flag,
            "metadata": {k: v for k, v in flag.get("metadata", {}).items() if k != "decisionId"},
        }
        for flag in flags
    ]
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def create_ofrep_router(
    calls: LocalRouterCalls, snapshot: Callable[[], Snapshot | None]
) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["OpenFeature (OFREP)"])

    async def evaluate(
        http: Request, key: str, template: router_pb2.ResolveModelRequest, anonymous: bool
    ) -> dict[str, Any]:
        request = router_pb2.ResolveModelRequest()
        request.CopyFrom(template)
        request.context = key
        metadata = metadata_from_headers(dict(http.headers), bearer_is_api_key=True)
        peer = f"{http.client.host}:{http.client.port}" if http.client else ""
        try:
            decision = await calls.unary("ResolveModel", request, metadata, peer=peer)
        except CallFailedError as failure:
            raise _http_failure(failure) from None
        return _success(key, decision, anonymous)

    @router.post(
        "/evaluate/flags/{key}",
        summary="Evaluate one flag: the model for the context `key`",
        responses={400: {}, 401: {}, 403: {}, 429: {}},
    )
    async def evaluate_flag(key: str, http: Request) -> Response:
        try:
            template, has_key = parse_evaluation_context(await http.body())
            return JSONResponse(await evaluate(http, key, template, not has_key))
        except OfrepError as error:
            return error.response(key)

    @router.post(
        "/evaluate/flags",
        summary="Evaluate every configured context for one evaluation context",
        responses={304: {}, 400: {}, 401: {}, 403: {}},
    )
    async def evaluate_flags(http: Request) -> Response:
        try:
            template, has_key = parse_evaluation_context(await http.body())
            current = snapshot()
            if current is None:
                raise OfrepError(
                    503, "GENERAL", "no configuration loaded yet", {"Retry-After": "1"}
                )
            flags: list[dict[str, Any]] = []
            for key in sorted(current.contexts):
                try:
                    flags.append(await evaluate(http, key, template, not has_key))
                except OfrepError as error:
                    if error.status in (401, 503):
                        raise  # nothing can be evaluated for this caller
                    if error.status == 403:
                        continue  # a context this API key may not use is not its flag
                    flags.append(error.body(key) | {"errorCode": error.error_code or "GENERAL"})
        except OfrepError as error:
            return error.response(None)
        etag = _etag(flags)
        if _etag_matches(http.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse({"flags": flags}, headers={"ETag": etag})

    return router
