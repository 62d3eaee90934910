"""`modelroute.admin.v1.AdminService`: what operators and the CLI use."""

from __future__ import annotations

from collections import Counter

import aetcd
import grpc
from google.protobuf import timestamp_pb2
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.config_apply import apply_to_etcd
from modelroute.server.config_manager import ConfigManager
from modelroute.server.errors import ServiceError, invalid_argument, unimplemented
from modelroute.storage.etcd import EtcdConfigSource, EtcdConflictError


def _timestamp(value: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, config: ConfigManager, source: EtcdConfigSource, etcd: aetcd.Client) -> None:
        self._config = config
        self._source = source
        self._etcd = etcd

    async def GetConfigStatus(
        self,
        request: admin_pb2.GetConfigStatusRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> admin_pb2.GetConfigStatusResponse:
        response = admin_pb2.GetConfigStatusResponse(
            etcd_connected=self._source.connected,
            etcd_endpoints=[str(e) for e in self._source.endpoints],
            rejected_total=self._config.rejected_total,
        )
        if self._source.disconnected_since is not None:
            response.degraded_since.CopyFrom(_timestamp(self._source.disconnected_since))
        snapshot = self._config.current
        if snapshot is None:
            return response
        response.config_revision = snapshot.revision
        response.last_reload.CopyFrom(_timestamp(snapshot.applied_at))
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
            }
        )
        response.key_counts.update(counts)
        return response

    async def ApplyConfig(
        self,
        request: admin_pb2.ApplyConfigRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> admin_pb2.ApplyConfigResponse:
        changes: dict[str, bytes | None] = {}
        for index, change in enumerate(request.changes):
            if not change.key or change.key.startswith(("/", "runtime/")):
                await invalid_argument(
                    [(f"changes[{index}].key", "a key relative to the prefix, e.g. models/gpt-4o")]
                ).abort(context)
            changes[change.key] = None if change.delete else change.value_json.encode()
        if not changes:
            await invalid_argument([("changes", "at least one change is required")]).abort(context)
        try:
            plan, revision = await apply_to_etcd(
                self._etcd,
                self._source.prefix,
                changes,
                expected_revision=request.expected_revision,
                dry_run=request.dry_run,
            )
        except EtcdConflictError as exc:
            await ServiceError(grpc.StatusCode.ABORTED, "CONFIG_CONFLICT", str(exc)).abort(context)
        except (ConnectionError, aetcd.exceptions.ClientError) as exc:
            await ServiceError(
                grpc.StatusCode.UNAVAILABLE, "ETCD_UNAVAILABLE", f"etcd unreachable: {exc}"
            ).abort(context)
        if not plan.ok:
            await invalid_argument([(r.key, r.error) for r in plan.rejections]).abort(context)
        return admin_pb2.ApplyConfigResponse(
            revision=revision, diff=plan.diff, changed_keys=len(plan.changes)
        )

    async def GetUsageSummary(
        self,
        request: admin_pb2.GetUsageSummaryRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> admin_pb2.GetUsageSummaryResponse:
        return await unimplemented("GetUsageSummary", "usage analysis").abort(context)

    async def GetExperimentResults(
        self,
        request: admin_pb2.GetExperimentResultsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> admin_pb2.GetExperimentResultsResponse:
        return await unimplemented("GetExperimentResults", "experiment analysis").abort(context)

    async def ListAlerts(
        self,
        request: admin_pb2.ListAlertsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> admin_pb2.ListAlertsResponse:
        return await unimplemented("ListAlerts", "alerts").abort(context)
