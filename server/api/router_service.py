"""`modelroute.v1.ModelRouterService`: the API applications call around every LLM call."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import aetcd
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from modelroute.server.api.errors import (
    ServiceError,
    database_unavailable,
    invalid_argument,
    not_found,
    not_ready,
    unimplemented,
)
from modelroute.server.core.config_values import ID_PATTERN
from modelroute.server.core.decision_token import (
    DecisionToken,
    DecisionTokens,
    MalformedTokenError,
    UnknownTokenError,
    new_key,
)
from modelroute.server.core.resolver import (
    Cause,
    Decision,
    NoModelAvailableError,
    ResolveInput,
    RuntimeLimits,
    resolve,
)
from modelroute.server.core.snapshot import Snapshot
from modelroute.server.runtime.config_manager import ConfigManager
from modelroute.server.runtime.preferences import PreferenceCache
from modelroute.server.runtime.quotas import Admission, QuotaTracker
from modelroute.server.telemetry import decision_spans
from modelroute.server.telemetry.decision_spans import hash_user as hash_user
from modelroute.server.telemetry.metrics import NO_METRICS, MetricsRecorder
from modelroute.server.usage.usage_writer import (
    UsageQueueFullError,
    UsageStoreUnavailableError,
    UsageWriter,
)
from modelroute.storage.preference_store import FeedbackRecord, FeedbackStore, StoredPreference
from modelroute.storage.usage_store import UsageRecord
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.exc import DBAPIError

tracer = trace.get_tracer("modelroute.router")
log = logging.getLogger("modelroute.router")
COOLDOWN_OUTCOMES: Final = frozenset({"RATE_LIMITED", "QUOTA_EXCEEDED"})
DEFAULT_COOLDOWN: Final = timedelta(seconds=60)
MAX_ADMISSION_ROUNDS: Final = 8
SYNC_TIMEOUT_SECONDS: Final = 0.25
WORKER_METADATA: Final = "modelroute-worker"
CooldownStarter = Callable[[str, timedelta, str], Awaitable[object]]
_propagator: Final = TraceContextTextMapPropagator()

CONTEXT_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
USER_ID_MAX: Final = 256
TIER_PATTERN: Final = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
MAX_ATTRIBUTES: Final = 32
MAX_EXCLUDED: Final = 32
MAX_REPORTS: Final = 1000
MAX_TOKENS: Final = 100_000_000
MAX_LATENCY_MS: Final = 86_400_000
MAX_ERROR_MESSAGE: Final = 2000
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
_OUTCOMES: Final = {
    v.number: v.name.removeprefix("OUTCOME_")
    for v in types_pb2.DESCRIPTOR.enum_types_by_name["Outcome"].values
    if v.number
}


def _parent_context(context: grpc.aio.ServicerContext) -> otel_context.Context | None:  # type: ignore[type-arg]
    metadata = context.invocation_metadata() or ()
    carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
    return _propagator.extract(carrier) if carrier else None


def validate_resolve(request: router_pb2.ResolveModelRequest) -> list[tuple[str, str]]:
    violations = []
    if not CONTEXT_PATTERN.match(request.context):
        violations.append(
            ("context", "1-128 characters of letters, digits and . _ : / - (e.g. rag.answer)")
        )
    if len(request.user.id) > USER_ID_MAX:
        violations.append(("user.id", f"at most {USER_ID_MAX} characters"))
    if not TIER_PATTERN.match(request.user.tier):
        violations.append(("user.tier", "at most 64 characters of letters, digits and . _ -"))
    if len(request.attributes) > MAX_ATTRIBUTES:
        violations.append(("attributes", f"at most {MAX_ATTRIBUTES} entries"))
    for key, value in request.attributes.items():
        if not key or len(key) > 64 or len(value) > 256:
            violations.append((f"attributes[{key[:64]}]", "keys 1-64, values 0-256 characters"))
    if len(request.exclude_models) > MAX_EXCLUDED:
        violations.append(("exclude_models", f"at most {MAX_EXCLUDED} models"))
    for index, model in enumerate(request.exclude_models):
        if len(model) > 128:
            violations.append((f"exclude_models[{index}]", "at most 128 characters"))
    if len(request.request_id) > 128:
        violations.append(("request_id", "at most 128 characters"))
    return violations


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(max(0.0, seconds))
    return duration_pb2.Duration(seconds=whole, nanos=round((max(0.0, seconds) - whole) * 1e9))


class ModelRouterService(router_pb2_grpc.ModelRouterServiceServicer):
    metrics: MetricsRecorder = NO_METRICS  # replaced by the server wiring

    def __init__(
        self,
        config: ConfigManager,
        usage: UsageWriter,
        runtime: RuntimeLimits,
        *,
        start_cooldown: CooldownStarter | None = None,
        quotas: QuotaTracker | None = None,
        tokens: DecisionTokens | None = None,
        preferences: PreferenceCache | None = None,
        feedback: FeedbackStore | None = None,
        etcd: aetcd.Client | None = None,
        etcd_prefix: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        worker_name: str = "",
    ) -> None:
        # `serve --workers N`: answers say which worker gave them (trailing metadata).
        self._worker_metadata = ((WORKER_METADATA, worker_name),) if worker_name else None
        self._config = config
        self._preferences = preferences
        self._feedback = feedback
        self._etcd = etcd
        self._etcd_prefix = etcd_prefix
        self._tokens = tokens or DecisionTokens(new_key())
        self._usage = usage
        self._runtime = runtime
        self._quotas = quotas
        self._start_cooldown = start_cooldown
        self._clock = clock

    def _snapshot(self) -> Snapshot:
        snapshot = self._config.current
        if snapshot is None:
            raise not_ready()
        return snapshot

    async def ResolveModel(
        self,
        request: router_pb2.ResolveModelRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ResolveModelResponse:
        started = time.perf_counter()
        started_ns = time.time_ns()
        try:
            violations = validate_resolve(request)
            if violations:
                raise invalid_argument(violations)
            snapshot = self._snapshot()
            now = self._clock()
            resolve_input = ResolveInput(
                context=request.context,
                user_id=request.user.id,
                tier=request.user.tier,
                exclude_models=frozenset(request.exclude_models),
                request_id=request.request_id,
                preferred_model=await self._preferred_model(snapshot, request),
            )
            try:
                decision = resolve(snapshot, resolve_input, now, self._runtime)
                if self._quotas is not None:
                    decision, now = await self._admit(snapshot, resolve_input, decision, now)
            except NoModelAvailableError as exc:
                raise _no_model_error(exc, now) from None
            token = self._tokens.encode(
                context=request.context,
                model_id=decision.model_id,
                reason=int(decision.reason),
                experiment_id=decision.experiment_id,
                variant_id=decision.variant_id,
                config_revision=decision.config_revision,
                issued_at_ms=int(now.timestamp() * 1000),
            )
        except ServiceError as error:
            decision_spans.record_failure(
                context.invocation_metadata(),
                started_ns,
                request.context,
                error.reason,
                error.message,
            )
            await error.abort(context)
        except Exception as exc:
            decision_spans.record_failure(
                context.invocation_metadata(), started_ns, request.context, "INTERNAL", repr(exc)
            )
            raise
        response = router_pb2.ResolveModelResponse(
            model_id=decision.model_id,
            provider=decision.provider,
            fallback_model_ids=decision.fallback_model_ids,
            reason=int(decision.reason),  # type: ignore[arg-type]
            experiment_id=decision.experiment_id,
            variant_id=decision.variant_id,
            decision_id=token,
            config_revision=decision.config_revision,
            warnings=decision.warnings,
            cache_ttl=_duration(decision.cache_ttl_seconds),
        )
        if decision.fallback_cause is not None:
            response.fallback.from_model_id = decision.fallback_from
            response.fallback.cause = int(decision.fallback_cause)  # type: ignore[assignment]
        decision_spans.record_decision(
            context.invocation_metadata(),
            started_ns,
            request.context,
            request.user.id,
            request.user.tier,
            request.request_id,
            decision,
        )
        self.metrics.record_decision(
            request.context,
            decision.model_id,
            int(decision.reason),
            None if decision.fallback_cause is None else int(decision.fallback_cause),
            time.perf_counter() - started,
        )
        if self._worker_metadata is not None:
            context.set_trailing_metadata(self._worker_metadata)
        return response

    async def _preferred_model(
        self, snapshot: Snapshot, request: router_pb2.ResolveModelRequest
    ) -> str | None:
        """Only user-selectable contexts look preferences up (most resolves skip the cache)."""
        if self._preferences is None or not request.user.id:
            return None
        spec = snapshot.contexts.get(request.context)
        if spec is None or not spec.user_selectable:
            return None
        try:
            return await self._preferences.preferred_model(request.user.id, request.context)
        except DBAPIError as exc:
            # A preference is a nicety: never fail a resolve over it.
            log.warning("preference lookup failed, resolving without it: %s", exc)
            return None

    async def _admit(
        self, snapshot: Snapshot, resolve_input: ResolveInput, decision: Decision, now: datetime
    ) -> tuple[Decision, datetime]:
        """Count the admission against the served provider's request limits. When this
        replica's share of what is left is used, publish (shared by concurrent callers)
        and ask again; past the limit, resolve again (the limit now skips the provider)."""
        quotas = self._quotas
        assert quotas is not None
        for _ in range(MAX_ADMISSION_ROUNDS):
            verdict = quotas.admit(decision.provider, now)
            if verdict is Admission.ADMITTED:
                break
            if verdict is Admission.SYNC_NEEDED and (
                not quotas.publishing_ok or not await quotas.sync(SYNC_TIMEOUT_SECONDS)
            ):
                # etcd unreachable: count locally against the last view of the others.
                quotas.admit(decision.provider, now, force=True)
                break
            now = self._clock()
            decision = resolve(snapshot, resolve_input, now, self._runtime)
        else:
            quotas.admit(decision.provider, now, force=True)
        if decision.cache_ttl_seconds and quotas.near_request_limit(decision.provider, now):
            # Cached decisions are not admissions: near a limit every call must come here.
            decision = dataclasses.replace(decision, cache_ttl_seconds=0.0)
        return decision, now

    async def ReportUsage(
        self,
        request: router_pb2.ReportUsageRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ReportUsageResponse:
        with tracer.start_as_current_span(
            "modelroute.report_usage", context=_parent_context(context), kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("modelroute.reports", len(request.reports))
            try:
                if not request.reports:
                    raise invalid_argument([("reports", "at least one report is required")])
                if len(request.reports) > MAX_REPORTS:
                    raise invalid_argument([("reports", f"at most {MAX_REPORTS} per call")])
                snapshot = self._snapshot()
                trace_id = format(span.get_span_context().trace_id, "032x")
                results, records, positions = self._prepare(request.reports, snapshot, trace_id)
                try:
                    inserted = await self._usage.submit(records) if records else []
                except UsageQueueFullError as exc:
                    raise ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "USAGE_QUEUE_FULL",
                        "usage write queue is full; nothing from this call was stored",
                        retry_after=timedelta(seconds=exc.retry_after_seconds),
                    ) from None
                except UsageStoreUnavailableError as exc:
                    raise ServiceError(
                        grpc.StatusCode.UNAVAILABLE,
                        "USAGE_STORE_UNAVAILABLE",
                        f"usage database unavailable; nothing from this call was stored ({exc})",
                        retry_after=timedelta(seconds=1),
                    ) from None
            except ServiceError as error:
                span.set_status(trace.StatusCode.ERROR, error.message)
                await error.abort(context)
            for position, record, was_inserted in zip(positions, records, inserted, strict=True):
                result = results[position]
                if was_inserted:
                    result.status = router_pb2.REPORT_STATUS_ACCEPTED
                    result.estimated_cost_usd = record.estimated_cost
                else:
                    result.status = router_pb2.REPORT_STATUS_DUPLICATE
            if span.is_recording():
                _annotate_usage(records)
            if self._quotas is not None:
                now = self._clock()
                for record, was_inserted in zip(records, inserted, strict=True):
                    if was_inserted:
                        self._quotas.record_usage(
                            record.provider,
                            record.context,
                            record.input_tokens + record.output_tokens,
                            record.estimated_cost,
                            now,
                        )
            await self._cool_down(request.reports, positions, records, inserted, snapshot)
            if self._worker_metadata is not None:
                context.set_trailing_metadata(self._worker_metadata)
            return router_pb2.ReportUsageResponse(results=results)

    async def _cool_down(
        self,
        reports: Sequence[router_pb2.UsageReport],
        positions: Sequence[int],
        records: Sequence[UsageRecord],
        inserted: Sequence[bool],
        snapshot: Snapshot,
    ) -> None:
        """Provider said quota exceeded / rate limited: move traffic off the model (or the
        whole provider) on every replica, for retry_after or the provider's cooldown."""
        if self._start_cooldown is None:
            return
        for position, record, was_inserted in zip(positions, records, inserted, strict=True):
            if not was_inserted or record.outcome not in COOLDOWN_OUTCOMES:
                continue  # a retried (duplicate) report must not extend a cooldown
            provider = snapshot.providers.get(record.provider)
            if record.retry_after_ms:
                duration = timedelta(milliseconds=record.retry_after_ms)
            elif provider is not None and provider.cooldown_seconds:
                duration = timedelta(seconds=provider.cooldown_seconds)
            else:
                duration = DEFAULT_COOLDOWN
            subject = (
                f"providers/{record.provider}"
                if reports[position].provider_wide
                else f"models/{record.model_id}"
            )
            try:
                await self._start_cooldown(subject, duration, record.outcome)
            except Exception as exc:  # noqa: BLE001 - the report is stored; say so, go on
                log.warning("could not start cooldown for %s: %s", subject, exc)

    def _prepare(
        self,
        reports: Sequence[router_pb2.UsageReport],
        snapshot: Snapshot,
        trace_id: str,
    ) -> tuple[list[router_pb2.ReportResult], list[UsageRecord], list[int]]:
        now = self._clock()
        results: list[router_pb2.ReportResult] = []
        records: list[UsageRecord] = []
        positions: list[int] = []
        for index, report in enumerate(reports):
            result = router_pb2.ReportResult(report_id=report.report_id)
            results.append(result)
            try:
                records.append(_record_from(report, snapshot, now, trace_id, self._tokens))
                positions.append(index)
            except ValueError as exc:
                result.status = router_pb2.REPORT_STATUS_REJECTED
                result.error = str(exc)
        return results, records, positions

    async def ListModels(
        self,
        request: router_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ListModelsResponse:
        try:
            snapshot = self._snapshot()
        except ServiceError as error:
            await error.abort(context)
        return model_list(snapshot, request.tier)

    async def WatchConfig(
        self,
        request: router_pb2.WatchConfigRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[router_pb2.WatchConfigResponse]:
        async for snapshot in self._config.revisions():
            applied = timestamp_pb2.Timestamp()
            applied.FromDatetime(snapshot.applied_at)
            yield router_pb2.WatchConfigResponse(
                config_revision=snapshot.revision, applied_at=applied
            )

    async def SubmitFeedback(
        self,
        request: router_pb2.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.SubmitFeedbackResponse:
        try:
            if self._feedback is None:
                raise unimplemented("SubmitFeedback", "no feedback store configured")
            record = _feedback_from(request, self._tokens, self._clock())
            try:
                feedback_id = await asyncio.to_thread(self._feedback.insert, record)
            except DBAPIError as exc:
                raise database_unavailable(exc) from None
        except ServiceError as error:
            await error.abort(context)
        return router_pb2.SubmitFeedbackResponse(feedback_id=str(feedback_id))

    async def GetUserPreference(
        self,
        request: router_pb2.GetUserPreferenceRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.GetUserPreferenceResponse:
        try:
            preferences = self._require_preferences()
            violations = _preference_violations("user_id", request.user_id, request.context)
            if violations:
                raise invalid_argument(violations)
            try:
                stored = (await preferences.for_user(request.user_id)).get(request.context)
            except DBAPIError as exc:
                raise database_unavailable(exc) from None
            if stored is None:
                scope = f"context {request.context!r}" if request.context else "all contexts"
                raise not_found("PREFERENCE_NOT_FOUND", f"the user has no preference for {scope}")
        except ServiceError as error:
            await error.abort(context)
        return router_pb2.GetUserPreferenceResponse(preference=_preference_message(stored))

    async def SetUserPreference(
        self,
        request: router_pb2.SetUserPreferenceRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.SetUserPreferenceResponse:
        try:
            preferences = self._require_preferences()
            violations = _preference_violations("user.id", request.user.id, request.context)
            if not request.model_id:
                violations.append(("model_id", "required"))
            if not TIER_PATTERN.match(request.user.tier):
                violations.append(("user.tier", "at most 64 letters, digits and . _ -"))
            if violations:
                raise invalid_argument(violations)
            snapshot = self._snapshot()
            _check_choosable(snapshot, request.context, request.model_id, request.user.tier)
            stored = StoredPreference(
                request.user.id, request.context, request.model_id, self._clock()
            )
            try:
                await preferences.set(stored, self._etcd, self._etcd_prefix)
            except DBAPIError as exc:
                raise database_unavailable(exc) from None
        except ServiceError as error:
            await error.abort(context)
        return router_pb2.SetUserPreferenceResponse(preference=_preference_message(stored))

    def _require_preferences(self) -> PreferenceCache:
        if self._preferences is None:
            raise unimplemented("user preferences", "no preference store configured")
        return self._preferences


def model_list(snapshot: Snapshot | None, tier: str = "") -> router_pb2.ListModelsResponse:
    """Models sorted by id: every one (tier empty, operators), or those the tier may choose."""
    if snapshot is None:
        return router_pb2.ListModelsResponse()
    return router_pb2.ListModelsResponse(
        models=[
            types_pb2.ModelInfo(
                model_id=m.model_id,
                provider=m.provider,
                tiers=sorted(m.tiers),
                input_usd_per_mtok=m.input_usd_per_mtok,
                output_usd_per_mtok=m.output_usd_per_mtok,
                enabled=m.enabled,
            )
            for m in sorted(snapshot.models.values(), key=lambda m: m.model_id)
            if not tier or (m.enabled and m.allows_tier(tier))
        ]
    )


def _preference_violations(user_field: str, user_id: str, context: str) -> list[tuple[str, str]]:
    """What Get/SetUserPreference share: a user id, and a context if one is named."""
    violations = []
    if not user_id:
        violations.append((user_field, "required"))
    elif len(user_id) > USER_ID_MAX:
        violations.append((user_field, f"at most {USER_ID_MAX} characters"))
    if context and not CONTEXT_PATTERN.match(context):
        violations.append(("context", "letters, digits and . _ : / - (at most 128)"))
    return violations


def _check_choosable(snapshot: Snapshot, context_name: str, model_id: str, tier: str) -> None:
    """FAILED_PRECONDITION unless users of `tier` may pick `model_id` (for `context_name`)."""
    if context_name:
        spec = snapshot.contexts.get(context_name)
        if spec is None or not spec.user_selectable:
            selectable = sorted(c.name for c in snapshot.contexts.values() if c.user_selectable)
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "CONTEXT_NOT_SELECTABLE",
                f"context {context_name!r} does not let users choose a model; "
                f"contexts that do: {', '.join(selectable) or 'none'}",
                precondition_violations=[("CONTEXT", context_name, "not user-selectable")],
            )
    allowed = sorted(
        m.model_id for m in snapshot.models.values() if m.enabled and m.allows_tier(tier)
    )
    if model_id in allowed:
        return
    model = snapshot.models.get(model_id)
    if model is None:
        why = "unknown model"
    elif not model.enabled:
        why = "model is disabled"
    else:
        why = f"model is for tiers {', '.join(sorted(model.tiers))} only"
    raise ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "MODEL_NOT_ALLOWED",
        f"{model_id!r} cannot be chosen by tier {tier or '(none)'!r} ({why}); "
        f"allowed: {', '.join(allowed) or 'none'}",
        precondition_violations=[("TIER", model_id, why)]
        + [("ALLOWED", allowed_id, "may be chosen by this tier") for allowed_id in allowed],
        metadata={"tier": tier, "allowed_models": ",".join(allowed)},
    )


def _preference_message(stored: StoredPreference) -> router_pb2.UserPreference:
    updated = timestamp_pb2.Timestamp()
    updated.FromDatetime(stored.updated_at)
    return router_pb2.UserPreference(
        user_id=stored.user_id,
        context=stored.context,
        model_id=stored.model_id,
        updated_at=updated,
    )


_THUMBS: Final = {router_pb2.THUMBS_UP: "UP", router_pb2.THUMBS_DOWN: "DOWN"}
_SOURCES: Final = {
    router_pb2.FEEDBACK_SOURCE_UNSPECIFIED: "USER",
    router_pb2.FEEDBACK_SOURCE_USER: "USER",
    router_pb2.FEEDBACK_SOURCE_REVIEWER: "REVIEWER",
}
MAX_COMMENT: Final = 2000


def _feedback_from(
    request: router_pb2.SubmitFeedbackRequest, tokens: DecisionTokens, now: datetime
) -> FeedbackRecord:
    violations: list[tuple[str, str]] = []
    thumbs = _THUMBS.get(request.thumbs)
    if request.thumbs and thumbs is None:
        violations.append(("thumbs", "THUMBS_UP or THUMBS_DOWN"))
    has_score = request.HasField("quality_score")
    if has_score and not 0.0 <= request.quality_score <= 1.0:  # NaN fails this too
        violations.append(("quality_score", f"{request.quality_score} is outside 0..1"))
    if thumbs is None and not has_score:
        violations.append(("thumbs", "give thumbs or a quality_score (or both)"))
    source = _SOURCES.get(request.source)
    if source is None:
        violations.append(("source", "USER or REVIEWER"))
    if len(request.comment) > MAX_COMMENT:
        violations.append(("comment", f"at most {MAX_COMMENT} characters"))
    token: DecisionToken | None = None
    if not request.decision_id:
        violations.append(("decision_id", "required (the decision_id ResolveModel returned)"))
    else:
        try:
            token = tokens.decode(request.decision_id)
        except MalformedTokenError as exc:
            violations.append(("decision_id", str(exc)))
        except UnknownTokenError as exc:
            if not violations:
                raise not_found("DECISION_NOT_FOUND", str(exc)) from None
    if violations or token is None or source is None:
        raise invalid_argument(violations)
    return FeedbackRecord(
        decision_id=request.decision_id,
        thumbs=thumbs,
        quality_score=request.quality_score if has_score else None,
        source=source,
        comment=request.comment or None,
        experiment_id=token.experiment_id or None,
        variant_id=token.variant_id or None,
        model_id=token.model_id,
        context=token.context,
        created_at=now,
    )


def _no_model_error(exc: NoModelAvailableError, now: datetime) -> ServiceError:
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


def _annotate_usage(records: Sequence[UsageRecord]) -> None:
    # One child span per report, with the GenAI semantic-convention attributes, so trace
    # backends show token usage per call.
    for record in records:
        with tracer.start_as_current_span(f"usage {record.model_id}") as child:
            child.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": record.provider,
                    "gen_ai.request.model": record.model_id,
                    "gen_ai.usage.input_tokens": record.input_tokens,
                    "gen_ai.usage.output_tokens": record.output_tokens,
                    "modelroute.context": record.context,
                    "modelroute.outcome": record.outcome,
                    "modelroute.report_id": record.report_id,
                    "modelroute.estimated_cost_usd": record.estimated_cost,
                }
            )
            if record.outcome != "OK":
                child.set_attribute("error.type", record.outcome)


def _record_from(
    report: router_pb2.UsageReport,
    snapshot: Snapshot,
    now: datetime,
    trace_id: str,
    tokens: DecisionTokens,
) -> UsageRecord:
    if not 1 <= len(report.report_id) <= 128:
        raise ValueError("report_id: 1-128 characters required (the idempotency key)")
    if not CONTEXT_PATTERN.match(report.context):
        raise ValueError("context: 1-128 characters of letters, digits and . _ : / -")
    if not ID_PATTERN.match(report.model_id):
        raise ValueError("model_id: a model id is required")
    for name, value, limit in (
        ("input_tokens", report.input_tokens, MAX_TOKENS),
        ("output_tokens", report.output_tokens, MAX_TOKENS),
        ("latency_ms", report.latency_ms, MAX_LATENCY_MS),
    ):
        if not 0 <= value <= limit:
            raise ValueError(f"{name}: {value} is outside 0..{limit:,}")
    outcome = _OUTCOMES.get(report.outcome)
    if outcome is None:
        raise ValueError("outcome: required (OK, RATE_LIMITED, QUOTA_EXCEEDED, ...)")
    if len(report.user.id) > USER_ID_MAX:
        raise ValueError(f"user.id: at most {USER_ID_MAX} characters")
    if not TIER_PATTERN.match(report.user.tier):
        # Column limits matter: on PostgreSQL one over-long value fails the whole group commit.
        raise ValueError("user.tier: at most 64 characters of letters, digits and . _ -")
    occurred = report.occurred_at.ToDatetime(tzinfo=UTC) if report.HasField("occurred_at") else now
    if occurred > now + MAX_FUTURE_SKEW:
        raise ValueError("occurred_at: more than 5 minutes in the future")
    token: DecisionToken | None = None
    if report.decision_id:
        try:
            token = tokens.decode(report.decision_id)
        except (MalformedTokenError, UnknownTokenError) as exc:
            raise ValueError(f"decision_id: {exc}") from None
    model = snapshot.models.get(report.model_id)
    retry_after_ms = None
    if report.HasField("retry_after"):
        retry_after_ms = int(report.retry_after.ToMilliseconds())
    return UsageRecord(
        report_id=report.report_id,
        decision_id=report.decision_id or None,
        context=report.context,
        model_id=report.model_id,
        # A model deleted from the config still gets its usage logged, at no known price.
        provider=model.provider if model else "unknown",
        outcome=outcome,
        user_id=report.user.id or None,
        tier=report.user.tier or None,
        input_tokens=report.input_tokens,
        output_tokens=report.output_tokens,
        latency_ms=report.latency_ms,
        estimated_cost=model.cost_usd(report.input_tokens, report.output_tokens) if model else 0.0,
        error_message=report.error_message[:MAX_ERROR_MESSAGE] or None,
        retry_after_ms=retry_after_ms,
        experiment_id=(token.experiment_id or None) if token else None,
        variant_id=(token.variant_id or None) if token else None,
        reason=_reason_name(token.reason) if token else None,
        config_revision=snapshot.revision,
        trace_id=trace_id if trace_id.strip("0") else None,
        created_at=occurred,
    )


def _reason_name(number: int) -> str | None:
    try:
        return types_pb2.Reason.Name(number).removeprefix("REASON_")  # type: ignore[arg-type]
    except ValueError:
        return None
