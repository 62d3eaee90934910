"""Admin HTTP API (JSON + OpenAPI), the web dashboard and `/metrics`, over the same
transport-free `AdminService` operations as gRPC: one implementation, two transports.

Runs inside the gRPC server's process and event loop (see `AdminHttpServer`), so it reads
the very same in-memory state (snapshot, cooldowns, quotas) as the replica it belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import grpc
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.errors import StoreUnavailableError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.snapshot import Snapshot
from .admin_http_models import (
    Alert,
    AlertList,
    ConfigStatus,
    CooldownList,
    ErrorResponse,
    Experiment,
    ExperimentList,
    ExperimentResults,
    ModelList,
    UsageSummary,
    VariantConfig,
    Violation,
    error_response,
)
from .admin_service import AdminService
from .errors import ServiceError, store_unavailable
from .http_guard import GuardMiddleware, TokenBucket
from .rollout_http import RolloutList

log = logging.getLogger("modelroute.admin_http")

API_PREFIX = "/api/admin"
MAX_BODY_BYTES = 1024 * 1024
DASHBOARD_DIR = Path(str(resources.files("modelroute.server.api").joinpath("dashboard"))).resolve()

# ServiceError (gRPC status) → HTTP status. Anything unlisted is a server fault: 500.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# --- helpers -----------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
Route = TypeVar("Route", bound=Callable[..., Any])
GROUP_BY = {
    "model": admin_pb2.USAGE_GROUP_BY_MODEL,
    "context": admin_pb2.USAGE_GROUP_BY_CONTEXT,
    "provider": admin_pb2.USAGE_GROUP_BY_PROVIDER,
    "day": admin_pb2.USAGE_GROUP_BY_DAY,
}


def _to_model(model: type[M], message: Message, **extra: Any) -> M:
    """Proto → pydantic through proto-JSON (int64 arrive as strings; pydantic coerces)."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return model.model_validate(data | extra)


def _timestamp(name: str, value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A query datetime as a protobuf Timestamp; naive means UTC. Out of range → 400."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromDatetime(value)
        stamp.ToDatetime()  # FromDatetime accepts some values ToJsonString/ToDatetime reject
    except (ValueError, OverflowError):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            f"{name}: out of range",
            field_violations=[(name, "a timestamp between years 0001 and 9999")],
        ) from None
    return stamp


def service_error_response(error: ServiceError) -> JSONResponse:
    response = error_response(
        HTTP_STATUS.get(error.code, 500),
        error.reason,
        error.message,
        [Violation(field=f, description=d) for f, d in error.field_violations],
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after.total_seconds())))
    elif error.code == grpc.StatusCode.UNAVAILABLE:
        response.headers["Retry-After"] = "1"
    return response


FromQuery = Annotated[
    datetime | None, Query(alias="from", description="Inclusive start (ISO 8601; naive = UTC)")
]
ToQuery = Annotated[
    datetime | None, Query(alias="to", description="Exclusive end (ISO 8601; default now)")
]


# Module level: FastAPI resolves (postponed) annotations against module globals.

BEARER = HTTPBearer(auto_error=False, description="Operator token")

# --- the app -----------------------------------------------------------------------------


def _experiments(snapshot: Snapshot | None) -> ExperimentList:
    if snapshot is None:
        return ExperimentList(experiments=[])
    now = datetime.now(UTC)
    return ExperimentList(
        experiments=[
            Experiment(
                experiment_id=e.experiment_id,
                context=e.context,
                variants=[
                    VariantConfig(variant_id=v.variant_id, model=v.model, weight=v.weight)
                    for v in e.variants
                ],
                start=e.start,
                end=e.end,
                enabled=e.enabled,
                running=e.running(now),
            )
            for e in sorted(snapshot.experiments.values(), key=lambda e: e.experiment_id)
        ]
    )


def create_admin_app(
    admin: AdminService,
    *,
    verify_token: Callable[[str | None], bool] | None = None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    snapshot: Callable[[], Snapshot | None] | None = None,
    rate_per_second: float = 20.0,
    burst: float = 40.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    extensions: Sequence[Callable[[FastAPI], None]] = (),
) -> FastAPI:
    """The admin HTTP app. `verify_token` (given the bearer token or None) guards every
    `/api/admin/*` path; `metrics` renders `/metrics` (body, content type); `snapshot`
    gives the config in force (for the experiment list, which has no gRPC counterpart)."""
    # FastAPIOffline: /docs and /redoc with their assets served from this process (the
    # stock pages load them from a CDN and are blank offline).
    app = FastAPIOffline(
        title="modelroute admin API",
        version="1",
        description="Read-only operator API: usage, experiments, config status, alerts, "
        "cooldowns, models. Same data as the gRPC modelroute.admin.v1.AdminService.",
        responses={
            400: {"model": ErrorResponse, "description": "Invalid parameters"},
            401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
            429: {"model": ErrorResponse, "description": "Rate limited (see Retry-After)"},
        },
    )

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if verify_token is None:
            return
        token = credentials.credentials if credentials is not None else None
        if not verify_token(token):
            raise StarletteHTTPException(401, "a valid operator bearer token is required")

    guard = [Depends(require_token)] if verify_token is not None else []
    common_errors: dict[int | str, dict[str, Any]] = {
        501: {"model": ErrorResponse, "description": "Not available in this version"},
        503: {"model": ErrorResponse, "description": "Dependency unavailable, retry"},
    }

    def admin_get(
        path: str, response_model: type[BaseModel], tag: str, **kwargs: Any
    ) -> Callable[[Route], Route]:
        """Every /api/admin route is declared here, so none can miss the token guard.
        (Flat routes, not an included router: tests enumerate them from `app.routes`.)"""
        return app.get(
            API_PREFIX + path,
            response_model=response_model,
            tags=[tag],
            dependencies=guard,
            responses=common_errors | kwargs.pop("responses", {}),
            **kwargs,
        )

    @admin_get("/llm-usage", UsageSummary, "usage")
    async def llm_usage(
        group_by: Literal["model", "context", "provider", "day"] = "model",
        from_: FromQuery = None,
        to: ToQuery = None,
    ) -> UsageSummary:
        """Reported usage and cost, aggregated by one dimension."""
        request = admin_pb2.GetUsageSummaryRequest(
            group_by=GROUP_BY[group_by],
            from_time=_timestamp("from", from_),
            to_time=_timestamp("to", to),
        )
        return _to_model(UsageSummary, await admin.usage_summary(request), group_by=group_by)

    @admin_get("/experiments", ExperimentList, "experiments")
    async def experiments() -> ExperimentList:
        """Experiments in the configuration this replica serves."""
        return _experiments(snapshot() if snapshot is not None else None)

    @admin_get(
        "/experiments/{experiment_id}/results",
        ExperimentResults,
        "experiments",
        responses={404: {"model": ErrorResponse, "description": "No such experiment"}},
    )
    async def experiment_results(
        experiment_id: Annotated[str, PathParam(min_length=1, max_length=256)],
        from_: FromQuery = None,
        to: ToQuery = None,
    ) -> ExperimentResults:
        """An experiment's variants side by side, with significance against the control."""
        request = admin_pb2.GetExperimentResultsRequest(
            experiment_id=experiment_id,
            from_time=_timestamp("from", from_),
            to_time=_timestamp("to", to),
        )
        return _to_model(ExperimentResults, await admin.experiment_results(request))

    @admin_get("/rollouts", RolloutList, "rollouts")
    async def rollouts() -> RolloutList:
        """Guarded rollouts: step, share, calls per arm, guardrails, controller decisions."""
        return _to_model(RolloutList, await admin.rollout_status(""))

    @admin_get("/config/status", ConfigStatus, "config")
    async def config_status() -> ConfigStatus:
        """Revision served, last reload, rejected keys, env overrides, quotas, budgets."""
        return _to_model(ConfigStatus, admin.config_status())

    @admin_get("/alerts", AlertList, "alerts")
    async def alerts(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        since: Annotated[datetime | None, Query(description="Only alerts raised since")] = None,
    ) -> AlertList:
        """Recent alerts, newest first."""
        request = admin_pb2.ListAlertsRequest(limit=limit, since=_timestamp("since", since))
        reply = await admin.list_alerts(request)
        return AlertList(
            alerts=[
                _to_model(
                    Alert,
                    a,
                    severity=admin_pb2.AlertSeverity.Name(a.severity)
                    .removeprefix("ALERT_SEVERITY_")
                    .lower(),
                )
                for a in reply.alerts
            ]
        )

    @admin_get("/cooldowns", CooldownList, "runtime")
    async def cooldowns() -> CooldownList:
        """Active cooldowns (models or providers), soonest end first."""
        return CooldownList.model_validate({"cooldowns": admin.cooldowns()})

    @admin_get("/models", ModelList, "config")
    async def models() -> ModelList:
        """Every configured model, enabled or not."""
        return _to_model(ModelList, admin.list_models())

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, error: ServiceError) -> JSONResponse:
        return service_error_response(error)

    @app.exception_handler(StoreUnavailableError)
    async def on_store_unavailable(request: Request, error: StoreUnavailableError) -> JSONResponse:
        return service_error_response(store_unavailable(error))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        violations = [
            Violation(
                field=".".join(str(p) for p in e.get("loc", ())[1:]) or "request",
                description=str(e.get("msg", "invalid")),
            )
            for e in error.errors()
        ]
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return error_response(400, "INVALID_ARGUMENT", f"invalid request: {summary}", violations)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        reasons = {401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        response = error_response(
            error.status_code,
            reasons.get(error.status_code, "HTTP_ERROR"),
            str(error.detail),
            [],
        )
        if error.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    if metrics is not None:
        render = metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            body, content_type = await asyncio.to_thread(render)
            return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/{path:path}", include_in_schema=False)
    async def dashboard(path: str) -> FileResponse:
        """Static dashboard files (package data; nothing loaded from the internet)."""
        target = (DASHBOARD_DIR / (path or "index.html")).resolve()
        if not target.is_relative_to(DASHBOARD_DIR) or not target.is_file():
            raise StarletteHTTPException(404, "no such dashboard file")
        return FileResponse(target, headers={"Cache-Control": "no-cache"})

    for extend in extensions:  # e.g. the application API (OFREP, Connect): server/api/
        extend(app)
    limiter = TokenBucket(rate_per_second, burst) if rate_per_second > 0 else None
    app.add_middleware(
        GuardMiddleware, limiter=limiter, max_body=max_body_bytes, api_prefix=API_PREFIX
    )
    return app
