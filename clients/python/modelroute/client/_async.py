"""AsyncModelRouter: resolve with a watched cache, batched usage reports, fallback calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from ._caches import DecisionCache, LastKnown
from ._offline import fail_safe_decision, retry_delay
from ._options import RouterOptions
from ._reports import build_report
from ._sender import CloseResult, ReportSender, SenderSettings
from ._walk import FallbackWalk
from ._watch import follow_config
from .classify import FailureClassifier
from .decision import Decision, Outcome, Reason, Source, env_var_for
from .errors import (
    ControlPlaneUnavailableError,
    ControlPlaneUnavailableWarning,
    InvalidResolveRequestError,
    NoModelAvailableError,
    RejectedReport,
)

logger = logging.getLogger("modelroute.client")

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "MODELROUTE_TARGET"  # the same variable as the `modelroute` CLI's
DEPRECATED_TARGET_ENV = "MODELROUTE_SERVER"


def target_from_environment() -> str | None:
    """$MODELROUTE_TARGET, else the deprecated $MODELROUTE_SERVER (with a warning)."""
    if value := os.environ.get(TARGET_ENV, "").strip():
        return value
    if value := os.environ.get(DEPRECATED_TARGET_ENV, "").strip():
        warnings.warn(
            f"{DEPRECATED_TARGET_ENV} is deprecated; set {TARGET_ENV} instead",
            DeprecationWarning,
            stacklevel=3,
        )
        return value
    return None


class AsyncModelRouter:
    """asyncio client for ModelRouterService.

    Create it once per process and `await close()` on shutdown (or use `async with`) so queued
    reports are delivered.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        options: RouterOptions | None = None,
        classifier: FailureClassifier | None = None,
        environ: Mapping[str, str] | None = None,
        api_key: str | None = None,
        on_rejected: Callable[[RejectedReport], None] | None = None,
        **option_overrides: Any,
    ) -> None:
        self.target = target or target_from_environment() or DEFAULT_TARGET
        # Sent as `x-api-key` when the deployment requires per-service keys (clients/<name>).
        key = api_key if api_key is not None else os.environ.get("MODELROUTE_API_KEY", "")
        self._metadata: tuple[tuple[str, str], ...] | None = (("x-api-key", key),) if key else None
        self.options = dataclasses.replace(options or RouterOptions(), **option_overrides)
        self.classifier = classifier or FailureClassifier()
        self._environ = os.environ if environ is None else environ
        self._credentials = credentials
        self._interceptors = list(interceptors or [])
        self._channel = channel
        self._owns_channel = channel is None
        self._stub: router_pb2_grpc.ModelRouterServiceStub | None = None
        self._cache = DecisionCache(self.options.cache_size)
        self._last_known = LastKnown(self.options.last_known_size)
        self._revision = 0
        self._local_cooldowns: dict[str, float] = {}
        self._reports = ReportSender(
            SenderSettings(
                batch_size=self.options.report_batch_size,
                interval=self.options.report_interval,
                call_timeout=self.options.report_timeout,
                max_pending=self.options.max_pending_reports,
                close_timeout=self.options.close_timeout,
            ),
            self._metadata,
            on_rejected,
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False
        self._close_result: CloseResult | None = None
        self._watching = False

    # ---- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> AsyncModelRouter:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self) -> router_pb2_grpc.ModelRouterServiceStub:
        """Create the channel and background tasks on first use, inside the caller's loop
        (grpc.aio channels belong to the loop that made them).
        """
        if self._closed:
            raise RuntimeError("AsyncModelRouter is closed")
        if self._stub is None:
            if self._channel is None:
                if self._credentials is not None:
                    self._channel = grpc.aio.secure_channel(
                        self.target, self._credentials, interceptors=self._interceptors
                    )
                else:
                    self._channel = grpc.aio.insecure_channel(
                        self.target, interceptors=self._interceptors
                    )
            self._stub = router_pb2_grpc.ModelRouterServiceStub(self._channel)
            self._reports.start(self._stub)
            if self.options.watch:
                watch = follow_config(
                    self._stub, self._metadata, self._observe_revision, self._set_watching
                )
                self._watch_task = asyncio.create_task(watch, name="modelroute-watch")
        return self._stub

    async def close(self) -> CloseResult:
        """Deliver queued reports (retrying while `close_timeout` lasts), then disconnect.

        Always returns within `close_timeout`; the result counts what was delivered and
        rejected and lists the report ids that were not delivered (also logged, with a
        ControlPlaneUnavailableWarning).
        """
        return await self._close(warn=True)

    async def _close(self, *, warn: bool) -> CloseResult:
        if self._close_result is not None:
            return self._close_result
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.close_timeout
        if self._watch_task is not None:
            self._watch_task.cancel()  # the channel close below ends its stream too
            await asyncio.wait([self._watch_task], timeout=self.options.close_timeout / 10)
        result = await self._reports.close(deadline, warn=warn)
        if self._owns_channel and self._channel is not None:
            # grace=None cancels whatever is still in flight; bounded all the same.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - loop.time(), 0.05)):
                    await self._channel.close()
        self._close_result = result
        return result

    # ---- resolve ---------------------------------------------------------------------

    async def resolve(
        self,
        context: str,
        *,
        user: str | None = None,
        tier: str | None = None,
        exclude_models: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> Decision:
        """Which model to call for `context`.

        Never fails because modelroute is down: it answers the last known decision or the
        configured default, with a warning.
        """
        decision, warning = await self._resolve(
            context, user, tier, exclude_models, attributes, request_id
        )
        if warning:
            warnings.warn(warning, ControlPlaneUnavailableWarning, stacklevel=2)
        return decision

    async def _resolve(
        self,
        context: str,
        user: str | None,
        tier: str | None,
        exclude_models: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> tuple[Decision, str | None]:
        """The decision and, when it was made without the server, the warning to show
        (the sync wrapper shows it in the caller's thread).
        """
        pinned = self._environ.get(env_var_for(context), "").strip()
        if pinned and pinned not in exclude_models:
            return Decision(context, pinned, reason=Reason.ENV_OVERRIDE, source=Source.ENV), None
        stub = self._start()
        key: Hashable = (
            context,
            user or "",
            tier or "",
            tuple(sorted(exclude_models)),
            tuple(sorted((attributes or {}).items())),
        )
        cached = self._cache.get(key)
        if cached is not None:
            return cached, None
        request = router_pb2.ResolveModelRequest(
            context=context,
            attributes=dict(attributes or {}),
            exclude_models=list(exclude_models),
            request_id=request_id,
        )
        if user or tier:
            request.user.CopyFrom(types_pb2.User(id=user or "", tier=tier or ""))
        try:
            response = await stub.ResolveModel(
                request, timeout=self.options.resolve_timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidResolveRequestError(error.details() or "invalid request") from error
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise NoModelAvailableError(
                    error.details() or "no model available", retry_delay(error)
                ) from error
            return fail_safe_decision(
                self._last_known.lookup(key, context),
                context,
                exclude_models,
                self.options.default_model,
                self.options.default_fallbacks,
                self.target,
                error,
            )
        decision = Decision.from_response(context, response)
        self._observe_revision(decision.config_revision)
        if decision.config_revision >= self._revision and not self._cooling(decision.model_id):
            self._cache.put(key, dataclasses.replace(decision, source=Source.CACHE))
        self._last_known.remember(key, decision)
        return decision, None

    @property
    def watching(self) -> bool:
        """True while the WatchConfig stream is live: config changes reach the cache
        within milliseconds; otherwise only `cache_ttl` bounds staleness.
        """
        return self._watching

    @property
    def config_revision(self) -> int:
        """The newest configuration revision this client has seen."""
        return self._revision

    def _observe_revision(self, revision: int) -> None:
        """A newer config revision makes every cached decision suspect: drop them all."""
        if revision > self._revision:
            self._revision = revision
            self._cache.clear()

    def _cooling(self, model_id: str) -> bool:
        until = self._local_cooldowns.get(model_id)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._local_cooldowns[model_id]
            return False
        return True

    def _set_watching(self, live: bool) -> None:
        self._watching = live

    # ---- reports ---------------------------------------------------------------------

    def report(
        self,
        context: str,
        model_id: str,
        *,
        outcome: Outcome = Outcome.OK,
        decision_id: str = "",
        user: str | None = None,
        tier: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        latency_ms: int = 0,
        error_message: str = "",
        retry_after: float | None = None,
        provider_wide: bool = False,
        report_id: str | None = None,
    ) -> str:
        """Queue a usage report (sent in the background in batches); returns its id.

        Rate-limit and quota outcomes are sent at once: they start a cooldown for every
        replica of every service.
        """
        report = build_report(
            context,
            model_id,
            outcome=outcome,
            decision_id=decision_id,
            user=user,
            tier=tier,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            error_message=error_message,
            retry_after=retry_after,
            provider_wide=provider_wide,
            report_id=report_id,
        )
        self.enqueue(report)
        return report.report_id

    def enqueue(self, report: router_pb2.UsageReport) -> None:
        """Queue a prepared report (must run in the router's loop)."""
        self._start()
        urgent = Outcome(report.outcome).starts_cooldown
        if urgent:
            self._cache.drop_model(report.model_id)
            seconds = report.retry_after.ToTimedelta().total_seconds() or 5.0
            self._local_cooldowns[report.model_id] = time.monotonic() + min(seconds, 60.0)
        self._reports.enqueue(report, urgent=urgent)

    @property
    def pending_reports(self) -> int:
        return self._reports.pending

    @property
    def rejected_reports(self) -> int:
        """How many reports the server refused as invalid (they are not retried)."""
        return self._reports.rejected

    @property
    def rejections(self) -> list[RejectedReport]:
        """The most recent refused reports (up to 100), oldest first, each with the
        server's reason naming the field.
        """
        return list(self._reports.rejections)

    async def flush(self) -> list[RejectedReport]:
        """Send every queued report now; returns those the server rejected as invalid
        (also warned about with ReportRejectedWarning and passed to `on_rejected`).
        Raises ReportDeliveryError when the server does not take them; they stay queued
        (report ids make the retry idempotent).
        """
        self._start()
        return await self._reports.flush()

    # ---- call with fallback ----------------------------------------------------------

    async def call_with_fallback(
        self,
        context: str,
        fn: Callable[[str], Awaitable[T]],
        *,
        user: str | None = None,
        tier: str | None = None,
        attributes: Mapping[str, str] | None = None,
        usage: Callable[[T], tuple[int, int]] | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """Resolve, then `await fn(model_id)` down the fallback chain until one succeeds.

        Every attempt is reported with its outcome and decision id. Failures are classified
        by `self.classifier`: rate limits, quotas, timeouts and 5xx move on to the next
        model; invalid requests and content-filter blocks are re-raised at once. When the
        chain is used up the router re-resolves excluding the models tried. `usage`
        extracts (input_tokens, output_tokens) from a result for the report.
        """
        walk = FallbackWalk(context, max_attempts, user=user, tier=tier)
        decision, warning = await self._resolve(context, user, tier, (), attributes)
        if warning:
            warnings.warn(warning, ControlPlaneUnavailableWarning, stacklevel=2)
        walk.offer(decision)
        while True:
            model = walk.next_model()
            if model is None:
                if not walk.can_re_resolve():
                    raise walk.exhausted()
                try:
                    decision, _ = await self._resolve(
                        context, user, tier, walk.excluded, attributes
                    )
                except (NoModelAvailableError, ControlPlaneUnavailableError):
                    exhausted = walk.exhausted()
                    raise exhausted from exhausted.__cause__
                if not walk.offer(decision):
                    raise walk.exhausted()
                continue
            started = time.monotonic()
            try:
                result = await fn(model)
            except Exception as error:
                if not walk.failed(model, error, started, self.classifier, self.report):
                    raise
                continue
            tokens = usage(result) if usage is not None else (0, 0)
            walk.succeeded(model, started, tokens, self.report)
            return result
