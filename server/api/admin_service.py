"""`modelroute.admin.v1.AdminService`: what operators and the CLI use."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.etcd import EtcdClient, EtcdConfigSource, EtcdConflictError
from modelroute.v1 import router_pb2

from ..runtime.change_meta import CURRENT_ACTOR, MAX_NOTE_CHARS
from ..runtime.config_manager import ConfigManager
from ..runtime.quotas import QuotaTracker
from ..runtime.runtime_state import RuntimeState
from ..telemetry.tracing import spans_dropped
from ..usage.alerts import AlertSink
from ..usage.analysis import experiment_results as compare_variants
from ..usage.analysis import usage_row
from ..usage.rollout_metrics import RolloutMetricsReader
from .config_apply import apply_to_etcd
from .config_history import ConfigHistory, conflict
from .errors import (
    ServiceError,
    ServicerContext,
    invalid_argument,
    rpc,
    unimplemented,
)
from .impact_preview import ImpactPreview
from .mapping import model_list, timestamp
from .rollout_status import rollout_status
from .validation import timestamp_value

GROUP_BY = {
    admin_pb2.USAGE_GROUP_BY_UNSPECIFIED: "model",
    admin_pb2.USAGE_GROUP_BY_MODEL: "model",
    admin_pb2.USAGE_GROUP_BY_CONTEXT: "context",
    admin_pb2.USAGE_GROUP_BY_PROVIDER: "provider",
    admin_pb2.USAGE_GROUP_BY_DAY: "day",
}


def _time_range(
    request: admin_pb2.GetUsageSummaryRequest | admin_pb2.GetExperimentResultsRequest,
) -> tuple[datetime | None, datetime | None]:
    since = (
        timestamp_value("from_time", request.from_time) if request.HasField("from_time") else None
    )
    until = timestamp_value("to_time", request.to_time) if request.HasField("to_time") else None
    if since is not None and until is not None and until <= since:
        raise invalid_argument([("to_time", "must be after from_time (the range is empty)")])
    return since, until


SEVERITY_VALUES = {
    "info": admin_pb2.ALERT_SEVERITY_INFO,
    "warning": admin_pb2.ALERT_SEVERITY_WARNING,
    "critical": admin_pb2.ALERT_SEVERITY_CRITICAL,
}
MAX_ALERTS = 1000


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Operator API: config status and apply, usage and experiment analysis, alerts.

    The gRPC methods are thin wrappers over transport-free operations that the admin
    HTTP API calls too.
    """

    def __init__(
        self,
        config: ConfigManager,
        source: EtcdConfigSource,
        etcd: EtcdClient,
        *,
        quotas: QuotaTracker | None = None,
        alerts: AlertSink | None = None,
        runtime: RuntimeState | None = None,
        analysis: AnalysisStore | None = None,
        history: ConfigHistory | None = None,
        impact: ImpactPreview | None = None,
        rollout_metrics: RolloutMetricsReader | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self.history = history
        self.impact = impact
        self._rollout_metrics = rollout_metrics
        self._runtime = runtime
        self._analysis = analysis
        self._config = config
        self._source = source
        self._etcd = etcd
        self._quotas = quotas
        self._alerts = alerts

    # --- gRPC: thin wrappers over the transport-free operations below ---------------------

    async def GetConfigStatus(
        self,
        request: admin_pb2.GetConfigStatusRequest,
        context: ServicerContext,
    ) -> admin_pb2.GetConfigStatusResponse:
        """What this replica serves: revision, rejections, etcd state, quotas, budgets."""
        return self.config_status()

    @rpc
    async def ApplyConfig(
        self,
        request: admin_pb2.ApplyConfigRequest,
        context: ServicerContext,
    ) -> admin_pb2.ApplyConfigResponse:
        """Validate config changes as every replica would and write them atomically."""
        return await self.apply_config(request)

    @rpc
    async def GetUsageSummary(
        self,
        request: admin_pb2.GetUsageSummaryRequest,
        context: ServicerContext,
    ) -> admin_pb2.GetUsageSummaryResponse:
        """Usage totals grouped by model, context, provider or day."""
        return await self.usage_summary(request)

    @rpc
    async def GetExperimentResults(
        self,
        request: admin_pb2.GetExperimentResultsRequest,
        context: ServicerContext,
    ) -> admin_pb2.GetExperimentResultsResponse:
        """Per-variant results of an experiment, with significance tests."""
        return await self.experiment_results(request)

    @rpc
    async def GetRolloutStatus(
        self,
        request: admin_pb2.GetRolloutStatusRequest,
        context: ServicerContext,
    ) -> admin_pb2.GetRolloutStatusResponse:
        """Where a rollout stands: its step, guardrail verdicts and history."""
        return await self.rollout_status(request.rollout_id)

    @rpc
    async def ListAlerts(
        self,
        request: admin_pb2.ListAlertsRequest,
        context: ServicerContext,
    ) -> admin_pb2.ListAlertsResponse:
        """The latest alerts, newest first."""
        return await self.list_alerts(request)

    @rpc
    async def ListConfigChanges(
        self,
        request: admin_pb2.ListConfigChangesRequest,
        context: ServicerContext,
    ) -> admin_pb2.ListConfigChangesResponse:
        """Recorded config changes, newest first."""
        return await self._require_history().list_changes(request)

    @rpc
    async def GetConfigAt(
        self,
        request: admin_pb2.GetConfigAtRequest,
        context: ServicerContext,
    ) -> admin_pb2.GetConfigAtResponse:
        """The configuration as it stood at a revision."""
        return await self._require_history().config_at(request)

    @rpc
    async def RollbackConfig(
        self,
        request: admin_pb2.RollbackConfigRequest,
        context: ServicerContext,
    ) -> admin_pb2.RollbackConfigResponse:
        """Restore the configuration of an earlier revision (a guarded write)."""
        return await self._require_history().rollback(request)

    @rpc
    async def PreviewConfigChange(
        self,
        request: admin_pb2.PreviewConfigChangeRequest,
        context: ServicerContext,
    ) -> admin_pb2.PreviewConfigChangeResponse:
        """What a change would do to recorded traffic (impact preview)."""
        if self.impact is None:
            raise unimplemented("impact preview", "no database configured")
        return await self.impact.preview(request)

    def _require_history(self) -> ConfigHistory:
        if self.history is None:
            raise unimplemented("config history", "no database configured")
        return self.history

    # --- operations (shared by gRPC and the admin HTTP API; raise ServiceError) ----------

    def config_status(self) -> admin_pb2.GetConfigStatusResponse:
        """GetConfigStatus without the transport (shared with the admin HTTP API)."""
        response = admin_pb2.GetConfigStatusResponse(
            etcd_connected=self._source.connected,
            etcd_endpoints=[str(e) for e in self._source.endpoints],
            rejected_total=self._config.rejected_total,
            spans_dropped=spans_dropped(),
        )
        degraded_since = self._config.from_file_since or self._source.disconnected_since
        if degraded_since is not None:
            response.degraded_since.CopyFrom(timestamp(degraded_since))
        response.serving_last_good_file = self._config.from_file_since is not None
        if self._quotas is not None:
            now = self._clock()
            response.live_replicas = self._quotas.live_replicas(now)
            for state in self._quotas.provider_states(now):
                response.quotas.add(
                    provider=state.subject,
                    limit=state.metric,
                    limit_value=int(state.limit),
                    remaining=int(state.remaining),
                    reset_at=timestamp(state.reset_at),
                    is_exceeded=state.exceeded,
                )
        snapshot = self._config.current
        if snapshot is None:
            return response
        response.config_revision = snapshot.revision
        response.last_reload.CopyFrom(timestamp(snapshot.applied_at))
        for rejection in sorted(snapshot.rejections.values(), key=lambda r: r.key):
            response.rejected_keys.add(
                key=self._source.prefix + rejection.key,
                error=rejection.error,
                revision=rejection.revision,
                previous_value_in_force=rejection.previous_in_force,
            )
        for variable, model in sorted(snapshot.env_overrides.items()):
            response.env_overrides.add(variable=variable, model_id=model)
        counts = Counter(
            {
                "models": len(snapshot.models),
                "contexts": len(snapshot.contexts),
                "experiments": len(snapshot.experiments),
                "overrides": len(snapshot.overrides),
                "providers": len(snapshot.providers),
                "clients": len(snapshot.clients),
            }
        )
        response.key_counts.update(counts)
        if self._quotas is not None:
            for state in self._quotas.budget_states(self._clock()):
                budget = snapshot.contexts[state.subject].budget
                response.budgets.add(
                    context=state.subject,
                    limit_usd=state.limit,
                    spent_usd=state.used,
                    reset_at=timestamp(state.reset_at),
                    is_exceeded=state.exceeded,
                    on_exceeded="deny" if budget and budget.deny_when_exceeded else "fallback",
                )
        return response

    async def apply_config(
        self, request: admin_pb2.ApplyConfigRequest
    ) -> admin_pb2.ApplyConfigResponse:
        """ApplyConfig without the transport; raises ServiceError or a store error."""
        changes: dict[str, bytes | None] = {}
        for index, change in enumerate(request.changes):
            if not change.key or change.key.startswith(("/", "runtime/")):
                raise invalid_argument(
                    [(f"changes[{index}].key", "a key relative to the prefix, e.g. models/gpt-4o")]
                )
            changes[change.key] = None if change.delete else change.value_json.encode()
        if not changes:
            raise invalid_argument([("changes", "at least one change is required")])
        if len(request.note) > MAX_NOTE_CHARS:
            raise invalid_argument([("note", f"at most {MAX_NOTE_CHARS} characters")])
        try:
            plan, revision = await apply_to_etcd(
                self._etcd,
                self._source.prefix,
                changes,
                expected_revision=request.expected_revision,
                dry_run=request.dry_run,
                actor=CURRENT_ACTOR.get(),
                note=request.note,
            )
        except EtcdConflictError:
            raise conflict(request.expected_revision) from None
        if not plan.ok:
            raise invalid_argument([(r.key, r.error) for r in plan.rejections])
        return admin_pb2.ApplyConfigResponse(
            revision=revision, diff=plan.diff, changed_keys=len(plan.changes)
        )

    async def usage_summary(
        self, request: admin_pb2.GetUsageSummaryRequest
    ) -> admin_pb2.GetUsageSummaryResponse:
        """GetUsageSummary without the transport; raises ServiceError or a store error."""
        group_by = GROUP_BY.get(request.group_by)
        if group_by is None:
            raise invalid_argument([("group_by", "CONTEXT, MODEL, PROVIDER or DAY")])
        since, until = _time_range(request)
        store = self._require_analysis()
        groups = await asyncio.to_thread(store.usage, group_by, since, until)
        return admin_pb2.GetUsageSummaryResponse(rows=[usage_row(g) for g in groups])

    async def experiment_results(
        self, request: admin_pb2.GetExperimentResultsRequest
    ) -> admin_pb2.GetExperimentResultsResponse:
        """GetExperimentResults without the transport; raises ServiceError or a store error."""
        if not request.experiment_id:
            raise invalid_argument([("experiment_id", "required")])
        snapshot = self._config.current
        experiment = snapshot.experiments.get(request.experiment_id) if snapshot else None
        if experiment is None:
            known = sorted(snapshot.experiments) if snapshot else []
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                "EXPERIMENT_NOT_FOUND",
                f"no experiment {request.experiment_id!r} in the configuration; "
                f"known: {', '.join(known) or 'none'}",
            )
        since, until = _time_range(request)
        store = self._require_analysis()
        usage = await asyncio.to_thread(
            store.usage,
            "variant",
            since,
            until,
            experiment_id=experiment.experiment_id,
            distinct_users=not experiment.bucket_by_request,
        )
        feedback = await asyncio.to_thread(
            store.feedback_by_variant, experiment.experiment_id, since, until
        )
        return compare_variants(experiment, {g.key: g for g in usage}, feedback)

    async def rollout_status(self, rollout_id: str) -> admin_pb2.GetRolloutStatusResponse:
        """GetRolloutStatus without the transport; raises ServiceError or a store error."""
        return await rollout_status(self._config.current, self._rollout_metrics, rollout_id)

    def _require_analysis(self) -> AnalysisStore:
        if self._analysis is None:
            raise unimplemented("usage analysis", "no database configured")
        return self._analysis

    async def list_alerts(
        self, request: admin_pb2.ListAlertsRequest
    ) -> admin_pb2.ListAlertsResponse:
        """ListAlerts without the transport; raises ServiceError or a store error."""
        limit = request.limit or 100
        if not 0 < limit <= MAX_ALERTS:
            raise invalid_argument([("limit", f"between 1 and {MAX_ALERTS}")])
        since = timestamp_value("since", request.since) if request.HasField("since") else None
        if self._alerts is None:
            return admin_pb2.ListAlertsResponse()
        records = await asyncio.to_thread(self._alerts.recent, limit, since)
        return admin_pb2.ListAlertsResponse(
            alerts=[
                admin_pb2.Alert(
                    alert_id=r.alert_id,
                    kind=r.kind,
                    severity=SEVERITY_VALUES.get(r.severity, admin_pb2.ALERT_SEVERITY_UNSPECIFIED),
                    message=r.message,
                    subject=r.subject,
                    created_at=timestamp(r.created_at),
                )
                for r in records
            ]
        )

    def cooldowns(self) -> list[dict[str, str]]:
        """Active cooldowns on this replica's view (shared through etcd), soonest end first."""
        if self._runtime is None:
            return []
        active = self._runtime.active(self._clock())
        return [
            {"subject": subject, "until": until.isoformat()}
            for subject, until in sorted(active.items(), key=lambda item: item[1])
        ]

    def list_models(self) -> router_pb2.ListModelsResponse:
        """Every configured model (enabled or not), sorted by id."""
        return model_list(self._config.current)
