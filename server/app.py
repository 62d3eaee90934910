"""Wiring: etcd (embedded or external), database, config manager, gRPC services, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aetcd
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.storage.alert_store import AlertStore
from modelroute.storage.analysis_store import AnalysisStore
from modelroute.storage.data_dir_lock import DataDirLock
from modelroute.storage.database import create_engine_for, default_sqlite_url, upgrade
from modelroute.storage.embedded_etcd import EmbeddedEtcd
from modelroute.storage.etcd import (
    EtcdConfigSource,
    connect,
    parse_endpoints,
)
from modelroute.storage.history_store import HistoryStore
from modelroute.storage.preference_store import FeedbackStore, PreferenceStore
from modelroute.storage.rollout_store import EtcdRolloutStore
from modelroute.storage.runtime_store import EtcdRuntimeStore
from modelroute.storage.updates import ConfigUpdate
from modelroute.storage.usage_store import UsageStore
from modelroute.v1 import router_pb2, router_pb2_grpc
from sqlalchemy import Engine

from .api.admin_http import create_admin_app
from .api.admin_service import AdminService
from .api.application_http import application_routes
from .api.auth import AdminTokens, Authorizer, GuardedServer
from .api.config_apply import seed_if_empty
from .api.config_history import ConfigHistory
from .api.http_listener import HttpListener
from .api.impact_preview import ImpactPreview
from .api.local_calls import LocalRouterCalls
from .api.operator_http import add_operator_routes
from .api.router_service import ModelRouterService
from .api.tls import TlsFiles, server_credentials
from .core.snapshot import (
    DEFAULT_HISTORY_DAYS,
    Rejection,
    Snapshot,
    env_overrides_from,
)
from .options import DEFAULT_BOOTSTRAP, ServeOptions
from .runtime.config_manager import ConfigManager
from .runtime.decision_keys import DecisionKeyManager
from .runtime.history_recorder import HistoryRecorder
from .runtime.preferences import PreferenceCache
from .runtime.quota_counts import QuotaAlert
from .runtime.quota_publisher import QuotaPublisher
from .runtime.quotas import QuotaTracker
from .runtime.runtime_state import RuntimeState, start_cooldown
from .telemetry.metrics import ServerMetrics, Sources
from .telemetry.tracing import configure_tracing, shutdown_tracing
from .usage import alert_rules
from .usage.alerts import AlertSink
from .usage.rollout_controller import RolloutController
from .usage.rollout_metrics import RolloutMetricsReader
from .usage.usage_writer import UsageWriter

__all__ = ["DEFAULT_BOOTSTRAP", "ModelrouteServer", "ServeOptions"]

log = logging.getLogger("modelroute.server")
SERVICE_NAMES = (
    router_pb2.DESCRIPTOR.services_by_name["ModelRouterService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class ModelrouteServer:
    """One replica. `start()` returns once the port is bound; health turns SERVING when the
    first valid snapshot is loaded."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.port = 0
        self.embedded_etcd: EmbeddedEtcd | None = None
        self.data_dir_lock: DataDirLock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        # Set during start(); stop() releases whatever was acquired, even after a failed start.
        self.grpc_server: grpc.aio.Server | None = None
        self.usage_writer: UsageWriter | None = None
        self.etcd: aetcd.Client | None = None
        self.engine: Engine | None = None
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}".replace(
            "/", "_"
        )
        self.alerts: AlertSink | None = None
        self.quotas: QuotaTracker | None = None
        self._quota_publisher: QuotaPublisher | None = None
        self.admin_http: HttpListener | None = None
        self.admin_port = 0
        self.metrics: ServerMetrics | None = None
        self.rollout_controller: RolloutController | None = None

    async def start(self) -> None:
        options = self.options
        if not options.etcd_endpoints:
            # The data dir's embedded etcd belongs to one instance: a second one refuses
            # at once, before it prints or starts anything.
            self.data_dir_lock = DataDirLock(options.data_dir)
            self.data_dir_lock.acquire()
        # Security options are checked first: a typo must not start an open server.
        tls = TlsFiles.from_options(options.tls_cert, options.tls_key, options.tls_client_ca)
        grpc_credentials = server_credentials(tls) if tls is not None else None
        etcd_tls = options.etcd_tls()
        if options.admin_tokens is None:
            self.admin_tokens = AdminTokens.from_environment(options.admin_token_file)
        else:
            self.admin_tokens = AdminTokens(
                options.admin_tokens, token_file=options.admin_token_file
            )
        if not self.admin_tokens.configured:
            log.warning(
                "no admin token configured: AdminService is open to anyone who can reach "
                "the port (set MODELROUTE_ADMIN_TOKENS or --admin-token-file; docs/security.md)"
            )
        configure_tracing()
        endpoints_text = options.etcd_endpoints
        if not endpoints_text:
            self.embedded_etcd = EmbeddedEtcd(options.data_dir / "etcd")
            await asyncio.to_thread(self.embedded_etcd.start)
            endpoints_text = self.embedded_etcd.endpoint
        endpoints = parse_endpoints(endpoints_text)

        self.quotas = QuotaTracker(self.replica_id, self._current, on_alert=self._quota_alert)
        self.metrics = self._create_metrics()
        database_url = options.database_url or default_sqlite_url(options.data_dir)
        await asyncio.to_thread(upgrade, database_url)
        self.engine = create_engine_for(database_url)
        self.usage_writer = UsageWriter(
            UsageStore(self.engine), max_pending=options.usage_max_pending, metrics=self.metrics
        )
        await self.usage_writer.start()

        credentials: dict[str, Any] = {
            "username": options.etcd_username,
            "password": options.etcd_password,
            "tls": etcd_tls,
        }
        self.etcd = connect(endpoints, **credentials)
        self.runtime_store = EtcdRuntimeStore(self.etcd, options.etcd_prefix)
        if options.seed or (options.seed is None and self.embedded_etcd is not None):
            await self._seed_if_empty()

        self.config_source = EtcdConfigSource(endpoints, options.etcd_prefix, **credentials)
        self.alerts = AlertSink(
            AlertStore(self.engine), self._webhook_url, replica_id=self.replica_id
        )
        self.runtime = RuntimeState(self.quotas)
        self.decision_keys = DecisionKeyManager.starting(options.data_dir / "decision-key")
        self.preferences = PreferenceCache(PreferenceStore(self.engine))
        self.history_recorder = HistoryRecorder(
            HistoryStore(self.engine), history_days=self._history_days
        )
        self.config = ConfigManager(
            self.config_source,
            env_overrides_from(),
            on_update=self._on_watched_update,
            on_rejection=self._rejection_alert,
            last_good_file=options.last_good_file or options.data_dir / "last-good-config.json",
        )
        self._quota_publisher = QuotaPublisher(self.quotas, self.runtime_store)
        self.health = health.aio.HealthServicer()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

        auth = Authorizer(self.admin_tokens, self._current, decision_context=self._decision_context)
        self.grpc_server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 1 if options.reuse_port else 0),
            ],
        )
        router_service = ModelRouterService(
            self.config,
            self.usage_writer,
            self.runtime,
            start_cooldown=self._start_cooldown,
            quotas=self.quotas,
            tokens=self.decision_keys.tokens,
            preferences=self.preferences,
            feedback=FeedbackStore(self.engine),
            runtime_store=self.runtime_store,
            metrics=self.metrics,
            worker_name=options.worker_name,
        )
        # Every service is registered through the authorizer (health and reflection pass open).
        guarded = GuardedServer(self.grpc_server, auth)
        router_pb2_grpc.add_ModelRouterServiceServicer_to_server(router_service, guarded)
        # The HTTP listener's application API calls the servicer through the same authorizer.
        self.local_calls = LocalRouterCalls(router_service, auth)
        admin_service = AdminService(
            self.config,
            self.config_source,
            self.etcd,
            quotas=self.quotas,
            alerts=self.alerts,
            runtime=self.runtime,
            analysis=AnalysisStore(self.engine),
            rollout_metrics=RolloutMetricsReader(AnalysisStore(self.engine)),
            history=ConfigHistory(
                self.history_recorder.store, self.etcd, options.etcd_prefix, self._current
            ),
            impact=ImpactPreview(self.engine, self.etcd, options.etcd_prefix),
        )
        self.admin_service = admin_service  # shared with the admin HTTP API
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_service, guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        address = f"{options.host}:{options.port}"
        if grpc_credentials is None:
            self.port = self.grpc_server.add_insecure_port(address)
        else:
            self.port = self.grpc_server.add_secure_port(address, grpc_credentials)
        await self.grpc_server.start()
        await self._start_admin_http(admin_service)
        if self.data_dir_lock is not None:
            self.data_dir_lock.describe(f"{options.host}:{self.port}")
        self._tasks.append(asyncio.create_task(self.alerts.run(), name="alerts"))
        self._tasks.append(asyncio.create_task(self.config.run(), name="config-reload"))
        self._tasks.append(asyncio.create_task(self.history_recorder.run(), name="history"))
        self._tasks.append(
            asyncio.create_task(self.history_recorder.prune_periodically(), name="history-prune")
        )
        self._tasks.append(asyncio.create_task(self._serving_when_ready(), name="health"))
        self._tasks.append(asyncio.create_task(self._quota_publisher.run(), name="quota-publish"))
        self._tasks.append(asyncio.create_task(self._watch_etcd_health(), name="etcd-health"))
        self.rollout_controller = RolloutController(
            EtcdRolloutStore(self.etcd, options.etcd_prefix),
            self._current,
            RolloutMetricsReader(AnalysisStore(self.engine)),
            self.alerts,
            self.replica_id,
        )
        self._tasks.append(asyncio.create_task(self.rollout_controller.run(), name="rollouts"))
        self._tasks.append(
            asyncio.create_task(
                self.decision_keys.ensure_in_etcd(self.runtime_store),
                name="decision-key",
            )
        )
        log.info(
            "modelroute listening on %s:%d (%s; admin tokens: %d; etcd %s%s%s, database %s)",
            options.host,
            self.port,
            "plaintext" if tls is None else ("mTLS" if tls.client_ca else "TLS"),
            self.admin_tokens.count,  # how many, never which
            endpoints_text,
            options.etcd_prefix,
            "" if etcd_tls is None else " over TLS",
            database_url.split("@")[-1],  # never log credentials
        )

    def _create_metrics(self) -> ServerMetrics:
        """Instruments read the parts when scraped, so they may be created before them."""
        return ServerMetrics(
            Sources(
                quotas=self.quotas,
                config_revision=lambda: (
                    self.config.current.revision if self.config.current else None
                ),
                rejected_total=lambda: self.config.rejected_total,
                etcd_connected=lambda: self.config_source.connected,
                usage_queue_depth=lambda: self.usage_writer.pending if self.usage_writer else 0,
                contexts=lambda: self.config.current.contexts if self.config.current else (),
            )
        )

    async def _start_admin_http(self, admin_service: AdminService) -> None:
        """The admin HTTP server (API, dashboard, /metrics) in this event loop."""
        assert self.metrics is not None
        if self.options.admin_port is None:
            return
        app = create_admin_app(
            admin_service,
            verify_token=self.options.admin_verify_token or self.admin_tokens.verify,
            metrics=self.metrics.render,
            snapshot=self._current,
            extensions=[application_routes(self.local_calls, self._current)],
        )
        add_operator_routes(
            app,
            admin_service,
            identify=self._operator_name,
            etcd=self.etcd,
            prefix=self.options.etcd_prefix,
            runtime=self.runtime_store,
            snapshot=self._current,
            preferences=self.preferences,
            clock=lambda: datetime.now(UTC),
        )
        admin_http = HttpListener(
            app,
            self.options.host,
            self.options.admin_port,
            tls_cert=self.options.tls_cert,
            tls_key=self.options.tls_key,
            tls_client_ca=self.options.tls_client_ca,
        )
        try:
            self.admin_port = await admin_http.start()
        except OSError as exc:
            # Routing matters more than the dashboard: keep serving gRPC without it.
            log.error(
                "admin HTTP port %d unavailable (%s): no dashboard", self.options.admin_port, exc
            )
            return
        self.admin_http = admin_http
        log.info(
            "admin dashboard at http://%s:%d/ (API docs /docs, metrics /metrics)",
            self.options.host,
            self.admin_port,
        )

    async def _start_cooldown(self, subject: str, duration: timedelta, reason: str) -> None:
        assert self.alerts is not None
        until = await start_cooldown(self.runtime_store, subject, duration, reason)
        alert_rules.cooldown_started(self.alerts, subject, until, reason)

    def _on_watched_update(self, update: ConfigUpdate) -> None:
        """Runtime state rides the config watch: cooldowns, counters, the decision key."""
        self.runtime.apply_update(update)
        self.decision_keys.apply_update(update)
        self.preferences.apply_update(update)
        if self.rollout_controller is not None:
            self.rollout_controller.notice(update)
        self.history_recorder.on_update(update)

    def _current(self) -> Snapshot | None:
        return self.config.current

    def _operator_name(self, token: str | None) -> str | None:
        """The admin HTTP caller's token name (None: refused)."""
        verify = self.options.admin_verify_token
        if verify is not None:  # a custom check (tests, embedding) names no one
            return "operator" if verify(token) else None
        return self.admin_tokens.name_of(token)

    def _history_days(self) -> int:
        snapshot = self.config.current
        return snapshot.settings.history_days if snapshot else DEFAULT_HISTORY_DAYS

    def _decision_context(self, decision_id: str) -> str | None:
        """The context a decision id was issued for (None if it cannot be read)."""
        try:
            return self.decision_keys.tokens.decode(decision_id).context
        except ValueError:
            return None

    def _webhook_url(self) -> str:
        snapshot = self.config.current
        return snapshot.settings.alert_webhook_url if snapshot is not None else ""

    def _quota_alert(self, alert: QuotaAlert) -> None:
        assert self.alerts is not None
        self.alerts.raise_alert(
            alert.kind, alert.severity, alert.subject, alert.message, alert.dedup_key
        )

    def _rejection_alert(self, rejection: Rejection) -> None:
        assert self.alerts is not None
        alert_rules.config_rejected(self.alerts, rejection)

    async def _watch_etcd_health(self) -> None:
        """Alert once per outage when etcd stays unreachable; at start, fall back to the
        last-good file if etcd does not answer in time."""
        options = self.options
        with contextlib.suppress(TimeoutError):
            await self.config.wait_ready(timeout=options.etcd_start_timeout_seconds)
        if self.config.current is None and not self.config.load_last_good():
            log.error(
                "etcd unreachable and no last-good config file: NOT_SERVING until etcd is back"
            )
        assert self.alerts is not None
        while True:
            since = self.config_source.disconnected_since
            if since is not None:
                down = (datetime.now(UTC) - since).total_seconds()
                if down >= options.etcd_alert_after_seconds:
                    endpoints = options.etcd_endpoints or "embedded"
                    alert_rules.etcd_unreachable(self.alerts, self.replica_id, endpoints, since)
            await asyncio.sleep(1.0)

    async def _seed_if_empty(self) -> None:
        assert self.etcd is not None
        seeded = await seed_if_empty(self.etcd, self.options.etcd_prefix, self.options.bootstrap)
        if seeded is not None:
            log.info("seeded %d keys from %s at revision %d", *seeded)

    async def _serving_when_ready(self) -> None:
        snapshot = await self.config.wait_ready()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving config revision %d", snapshot.revision)

    async def stop(self) -> None:
        """Graceful: stop taking calls, finish in-flight ones (a ReportUsage waiting for its
        commit completes), drain the usage queue, then release etcd and the database."""
        if self._stopped:
            return
        self._stopped = True
        if self.grpc_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.health.enter_graceful_shutdown(), 5)
            await self.grpc_server.stop(self.options.shutdown_grace_seconds)
        if self.admin_http is not None:
            await self.admin_http.stop()
        if self.usage_writer is not None:
            await self.usage_writer.stop()
        if self._quota_publisher is not None:
            await self._quota_publisher.withdraw()
        if self.alerts is not None:
            await self.alerts.drain()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a background task stuck in a call that ignores cancellation must not
            # hold the process (say which, so it can be fixed).
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.error("task %s did not stop within 5 s of cancellation", task.get_name())
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.etcd.close(), 5)
        if self.engine is not None:
            self.engine.dispose()
        if self.embedded_etcd is not None:
            await asyncio.to_thread(self.embedded_etcd.stop)
        if self.data_dir_lock is not None:
            self.data_dir_lock.release()
        if self.metrics is not None:
            self.metrics.shutdown()
        shutdown_tracing()
        log.info("modelroute stopped")
