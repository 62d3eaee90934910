"""`modelroute.v1.ModelRouterService`: the API applications call around every LLM call.

The handlers are thin: validation (api/validation.py), protobuf mapping (api/mapping.py),
spans (api/router_spans.py), quota admission and cooldowns (runtime/admission.py); a
`ServiceError` raised anywhere becomes the call's status through `errors.rpc`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import grpc
from modelroute.storage.errors import StoreUnavailableError
from modelroute.storage.preference_store import FeedbackStore, StoredPreference
from modelroute.storage.runtime_store import RuntimeStore
from modelroute.storage.usage_store import UsageRecord
from modelroute.v1 import router_pb2, router_pb2_grpc
from opentelemetry import trace

from ..core.decision_token import DecisionTokens, new_key
from ..core.resolver import (
    Decision,
    NoModelAvailableError,
    ResolveInput,
    RuntimeLimits,
    resolve,
)
from ..core.snapshot import Snapshot
from ..runtime.admission import admit
from ..runtime.config_manager import ConfigManager
from ..runtime.preferences import PreferenceCache
from ..runtime.quotas import QuotaTracker
from ..runtime.report_effects import CooldownStarter, ReportEffects
from ..telemetry import decision_spans
from ..telemetry.metrics import NO_METRICS, MetricsRecorder
from ..usage.usage_writer import (
    AfterCommit,
    UsageQueueFullError,
    UsageStoreUnavailableError,
    UsageWriter,
)
from .errors import (
    ServiceError,
    ServicerContext,
    no_model_available,
    not_found,
    not_ready,
    rpc,
    unimplemented,
)
from .mapping import (
    decision_response,
    feedback_record,
    model_list,
    preference_message,
    timestamp,
    usage_records,
)
from .router_spans import (
    annotate_usage,
    mark_failed,
    parent_context,
    tracer,
)
from .validation import (
    check_choosable,
    preference_violations,
    raise_if_invalid,
    set_preference_violations,
    validate_reports,
    validate_resolve,
)

log = logging.getLogger("modelroute.router")
WORKER_METADATA: Final = "modelroute-worker"


class ModelRouterService(router_pb2_grpc.ModelRouterServiceServicer):
    """Decisions, usage reports, feedback and user preferences for applications."""

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
        runtime_store: RuntimeStore | None = None,
        metrics: MetricsRecorder = NO_METRICS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        worker_name: str = "",
    ) -> None:
        """Serve from `config`'s snapshot; optional parts switch their RPCs on."""
        # `serve --workers N`: answers say which worker gave them (trailing metadata).
        self._worker_metadata = ((WORKER_METADATA, worker_name),) if worker_name else None
        self._config = config
        self._preferences = preferences
        self._feedback = feedback
        self._runtime_store = runtime_store
        self._tokens = tokens or DecisionTokens(new_key())
        self._usage = usage
        self._runtime = runtime
        self._quotas = quotas
        self._effects = ReportEffects(start_cooldown=start_cooldown, quotas=quotas, clock=clock)
        self._metrics = metrics
        self._clock = clock

    def _snapshot(self) -> Snapshot:
        snapshot = self._config.current
        if snapshot is None:
            raise not_ready()
        return snapshot

    @rpc
    async def ResolveModel(
        self, request: router_pb2.ResolveModelRequest, context: ServicerContext
    ) -> router_pb2.ResolveModelResponse:
        """Decide which model serves this call (and what to fall back to)."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        try:
            raise_if_invalid(validate_resolve(request))
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
                    decision, now = await admit(
                        self._quotas,
                        snapshot,
                        resolve_input,
                        decision,
                        now,
                        self._runtime,
                        self._clock,
                        context.time_remaining,
                    )
            except NoModelAvailableError as exc:
                raise no_model_available(exc, now) from None
            token = self._decision_id(request.context, decision, now)
        except ServiceError as error:
            decision_spans.record_failure(
                context.invocation_metadata(),
                started_ns,
                request.context,
                error.reason,
                error.message,
            )
            raise
        except Exception as exc:
            decision_spans.record_failure(
                context.invocation_metadata(), started_ns, request.context, "INTERNAL", repr(exc)
            )
            raise
        return self._answer(request, context, decision, token, started, started_ns)

    def _decision_id(self, context: str, decision: Decision, now: datetime) -> str:
        return self._tokens.encode(
            context=context,
            model_id=decision.model_id,
            reason=int(decision.reason),
            experiment_id=decision.experiment_id,
            variant_id=decision.variant_id,
            config_revision=decision.config_revision,
            issued_at_ms=int(now.timestamp() * 1000),
        )

    def _answer(
        self,
        request: router_pb2.ResolveModelRequest,
        context: ServicerContext,
        decision: Decision,
        token: str,
        started: float,
        started_ns: int,
    ) -> router_pb2.ResolveModelResponse:
        """The response to a decided call, with its span and metrics."""
        response = decision_response(decision, token)
        # The span is built once, now that everything about the decision is known.
        decision_spans.record_decision(
            context.invocation_metadata,
            started_ns,
            request.context,
            request.user.id,
            request.user.tier,
            request.request_id,
            decision,
        )
        self._metrics.record_decision(
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
        except StoreUnavailableError as exc:
            # A preference is a nicety: never fail a resolve over it.
            log.warning("preference lookup failed, resolving without it: %s", exc)
            return None

    @rpc
    async def ReportUsage(
        self, request: router_pb2.ReportUsageRequest, context: ServicerContext
    ) -> router_pb2.ReportUsageResponse:
        """Store usage reports (idempotent per report id); count them against limits."""
        with tracer.start_as_current_span(
            "modelroute.report_usage",
            context=parent_context(context),
            kind=trace.SpanKind.SERVER,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute("modelroute.reports", len(request.reports))
            try:
                raise_if_invalid(validate_reports(request))
                snapshot = self._snapshot()
                trace_id = format(span.get_span_context().trace_id, "032x")
                results, records, positions = usage_records(
                    request.reports, snapshot, self._clock(), trace_id, self._tokens
                )
                # Counting and cooldowns run after the commit, in the usage writer: also
                # when this caller goes away before the answer (runtime/report_effects.py).
                after_commit = self._effects.after_commit(
                    request.reports, positions, records, snapshot
                )
                inserted = await self._store_usage(records, after_commit)
            except ServiceError as error:
                mark_failed(span, error)
                raise
            for position, record, was_inserted in zip(positions, records, inserted, strict=True):
                result = results[position]
                if was_inserted:
                    result.status = router_pb2.REPORT_STATUS_ACCEPTED
                    result.estimated_cost_usd = record.estimated_cost
                else:
                    result.status = router_pb2.REPORT_STATUS_DUPLICATE
            if span.is_recording():
                annotate_usage(records)
            # GenAI client metrics: stored reports only (a retried duplicate counts once).
            self._metrics.record_usage_reports(
                [record for record, stored in zip(records, inserted, strict=True) if stored]
            )
            if self._worker_metadata is not None:
                context.set_trailing_metadata(self._worker_metadata)
            return router_pb2.ReportUsageResponse(results=results)

    async def _store_usage(
        self, records: Sequence[UsageRecord], after_commit: AfterCommit
    ) -> list[bool]:
        """Commit through the group writer, which then runs `after_commit`; which records
        were new (not duplicates).
        """
        if not records:
            return []
        try:
            return await self._usage.submit(records, after_commit)
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

    @rpc
    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: ServicerContext
    ) -> router_pb2.ListModelsResponse:
        """The models a tier may choose (every model when no tier is given)."""
        return model_list(self._snapshot(), request.tier)

    async def WatchConfig(
        self, request: router_pb2.WatchConfigRequest, context: ServicerContext
    ) -> AsyncIterator[router_pb2.WatchConfigResponse]:
        """Stream the revision of every snapshot this replica applies."""
        async for snapshot in self._config.revisions():
            yield router_pb2.WatchConfigResponse(
                config_revision=snapshot.revision, applied_at=timestamp(snapshot.applied_at)
            )

    @rpc
    async def SubmitFeedback(
        self, request: router_pb2.SubmitFeedbackRequest, context: ServicerContext
    ) -> router_pb2.SubmitFeedbackResponse:
        """Store thumbs / a quality score for a decision."""
        if self._feedback is None:
            raise unimplemented("SubmitFeedback", "no feedback store configured")
        record = feedback_record(request, self._tokens, self._clock())
        feedback_id = await asyncio.to_thread(self._feedback.insert, record)
        return router_pb2.SubmitFeedbackResponse(feedback_id=str(feedback_id))

    @rpc
    async def GetUserPreference(
        self, request: router_pb2.GetUserPreferenceRequest, context: ServicerContext
    ) -> router_pb2.GetUserPreferenceResponse:
        """The model a user chose for a context (or for all contexts)."""
        preferences = self._require_preferences()
        raise_if_invalid(preference_violations("user_id", request.user_id, request.context))
        stored = (await preferences.for_user(request.user_id)).get(request.context)
        if stored is None:
            scope = f"context {request.context!r}" if request.context else "all contexts"
            raise not_found("PREFERENCE_NOT_FOUND", f"the user has no preference for {scope}")
        return router_pb2.GetUserPreferenceResponse(preference=preference_message(stored))

    @rpc
    async def SetUserPreference(
        self, request: router_pb2.SetUserPreferenceRequest, context: ServicerContext
    ) -> router_pb2.SetUserPreferenceResponse:
        """Record a user's choice of model; every replica applies it within a watch."""
        preferences = self._require_preferences()
        raise_if_invalid(set_preference_violations(request))
        snapshot = self._snapshot()
        check_choosable(snapshot, request.context, request.model_id, request.user.tier)
        stored = StoredPreference(request.user.id, request.context, request.model_id, self._clock())
        await preferences.set(stored, self._runtime_store)
        return router_pb2.SetUserPreferenceResponse(preference=preference_message(stored))

    def _require_preferences(self) -> PreferenceCache:
        if self._preferences is None:
            raise unimplemented("user preferences", "no preference store configured")
        return self._preferences
