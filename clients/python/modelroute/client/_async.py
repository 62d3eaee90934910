"""AsyncModelRouter: resolve with a watched cache, batched usage reports, fallback calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from modelroute.client._caches import DecisionCache, LastKnown
from modelroute.client._reports import build_report
from modelroute.client._walk import FallbackWalk
from modelroute.client.classify import FailureClassifier
from modelroute.client.decision import Decision, Outcome, Reason, Source, env_var_for
from modelroute.client.errors import (
    Attempt,
    ControlPlaneUnavailableError,
    ControlPlaneUnavailableWarning,
    InvalidResolveRequestError,
    NoModelAvailableError,
    ReportDeliveryError,
)
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

logger = logging.getLogger("modelroute.client")

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50051"
MAX_REPORTS_PER_CALL = 1000  # ReportUsageRequest limit
# Status codes where a report batch may succeed later; anything else will never succeed.
_RETRYABLE_REPORT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


@dataclasses.dataclass(frozen=True, slots=True)
class RouterOptions:
    """Tuning knobs; the defaults suit a web service making LLM calls."""

    default_model: str | None = None  # used when modelroute was never reachable
    default_fallbacks: tuple[str, ...] = ()
    cache_size: int = 1024  # decisions cached for their cache_ttl (0: never cache)
    last_known_size: int = 1024  # fail-safe answers kept without expiry
    resolve_timeout: float = 1.0  # an LLM call must not wait long for the control plane
    report_batch_size: int = 100
    report_interval: float = 1.0  # seconds a report may wait for its batch
    report_timeout: float = 5.0
    max_pending_reports: int = 100_000
    close_timeout: float = 10.0  # how long close() keeps retrying undelivered reports
    watch: bool = True  # WatchConfig invalidation (off: TTL only)


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
        **option_overrides: Any,
    ) -> None:
        self.target = target or os.environ.get("MODELROUTE_TARGET", DEFAULT_TARGET)
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
        self._pending: deque[router_pb2.UsageReport] = deque()
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._watching = False

    # ---- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> AsyncModelRouter:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self) -> router_pb2_grpc.ModelRouterServiceStub:
        """Create the channel and background tasks on first use, in the caller's loop.

        grpc.aio channels belong to the loop that made them.
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
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="modelroute-reports"))
            if self.options.watch:
                self._tasks.append(asyncio.create_task(self._watch_loop(), name="modelroute-watch"))
        return self._stub

    async def close(self) -> None:
        """Deliver every queued report (retrying up to `close_timeout`), then disconnect."""
        if self._closed:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._stub is not None:
            deadline = time.monotonic() + self.options.close_timeout
            while self._pending:
                try:
                    await self.flush()
                except ReportDeliveryError as error:
                    if time.monotonic() >= deadline:
                        message = f"modelroute: {len(self._pending)} usage reports lost: {error}"
                        logger.error(message)
                        warnings.warn(message, ControlPlaneUnavailableWarning, stacklevel=2)
                        break
                    await asyncio.sleep(0.2)
        self._closed = True
        if self._owns_channel and self._channel is not None:
            await self._channel.close()

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
        """The decision and, when it was made without the server, the warning to show.

        The sync wrapper shows the warning in the caller's thread.
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
                    error.details() or "no model available", _retry_delay(error)
                ) from error
            return self._fail_safe(key, context, exclude_models, error)
        decision = Decision.from_response(context, response)
        self._observe_revision(decision.config_revision)
        if decision.config_revision >= self._revision and not self._cooling(decision.model_id):
            self._cache.put(key, dataclasses.replace(decision, source=Source.CACHE))
        self._last_known.remember(key, decision)
        return decision, None

    def _fail_safe(
        self,
        key: Hashable,
        context: str,
        exclude_models: Sequence[str],
        error: grpc.aio.AioRpcError,
    ) -> tuple[Decision, str]:
        known = self._last_known.lookup(key, context)
        if known is not None:
            decision = dataclasses.replace(known, source=Source.LAST_KNOWN)
            what = "the last known answer"
        elif self.options.default_model:
            decision = Decision(
                context,
                self.options.default_model,
                self.options.default_fallbacks,
                source=Source.STATIC_DEFAULT,
            )
            what = "the static default"
        else:
            raise ControlPlaneUnavailableError(
                f"modelroute at {self.target} is unreachable ({error.code().name}) and no "
                "default_model is configured"
            ) from error
        if exclude_models:  # the caller just saw these fail; do not hand them back first
            models = [m for m in decision.models if m not in exclude_models]
            decision = dataclasses.replace(
                decision,
                model_id=models[0] if models else decision.model_id,
                fallback_model_ids=tuple(models[1:]) if models else decision.fallback_model_ids,
            )
        message = (
            f"modelroute at {self.target} unreachable ({error.code().name}); using {what} "
            f"{decision.model_id!r} for {context!r}"
        )
        logger.warning(message)
        return decision, message

    @property
    def watching(self) -> bool:
        """True while the WatchConfig stream is live.

        Config changes then reach the cache within milliseconds; otherwise only
        `cache_ttl` bounds staleness.
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

    async def _watch_loop(self) -> None:
        """Follow WatchConfig; reconnect with backoff (entries still expire by TTL)."""
        assert self._stub is not None
        backoff = 0.05
        while True:
            try:
                watch = self._stub.WatchConfig(
                    router_pb2.WatchConfigRequest(), metadata=self._metadata
                )
                async for message in watch:
                    backoff = 0.05
                    self._watching = True
                    self._observe_revision(message.config_revision)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.info("modelroute server has no WatchConfig; caching by TTL only")
                    return
                logger.debug("modelroute WatchConfig: %s; reconnecting", error.code().name)
            self._watching = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

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
        self._pending.append(report)
        overflow = len(self._pending) - self.options.max_pending_reports
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            logger.error("modelroute: report queue full, dropped %d oldest reports", overflow)
        if Outcome(report.outcome).starts_cooldown:
            self._cache.drop_model(report.model_id)
            seconds = report.retry_after.ToTimedelta().total_seconds() or 5.0
            self._local_cooldowns[report.model_id] = time.monotonic() + min(seconds, 60.0)
            self._wake.set()
        elif len(self._pending) >= self.options.report_batch_size:
            self._wake.set()

    @property
    def pending_reports(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Send every queued report now.

        Raises ReportDeliveryError when the server does not take them; they stay queued
        (report ids make the retry idempotent).
        """
        self._start()
        async with self._send_lock:
            while self._pending:
                await self._send_batch()

    async def _send_batch(self) -> None:
        assert self._stub is not None
        size = min(len(self._pending), MAX_REPORTS_PER_CALL)
        batch = [self._pending.popleft() for _ in range(size)]
        try:
            reply = await self._stub.ReportUsage(
                router_pb2.ReportUsageRequest(reports=batch),
                timeout=self.options.report_timeout,
                metadata=self._metadata,
            )
        except asyncio.CancelledError:
            # close() cancelled the sender mid-call: keep the batch for the final flush
            # (the server dedups by report_id if it did store it).
            self._pending.extendleft(reversed(batch))
            raise
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE_REPORT_CODES:
                self._pending.extendleft(reversed(batch))
                raise ReportDeliveryError(
                    f"ReportUsage failed ({error.code().name}): {error.details()}"
                ) from error
            logger.error(
                "modelroute: %d usage reports refused (%s): %s",
                len(batch),
                error.code().name,
                error.details(),
            )
            return
        for result in reply.results:
            if result.status == router_pb2.REPORT_STATUS_REJECTED:
                logger.warning(
                    "modelroute: usage report %s rejected: %s", result.report_id, result.error
                )

    async def _flush_loop(self) -> None:
        """Send reports when a batch fills, a cooldown outcome arrives or time passes.

        The interval is `report_interval`; the loop backs off while the server refuses.
        """
        backoff = self.options.report_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self.options.report_interval
            except ReportDeliveryError as error:
                logger.warning("modelroute: %s; %d reports queued", error, len(self._pending))
                backoff = min(backoff * 2, 30.0)

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
        walk = FallbackWalk(context, max_attempts)
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
            assert walk.decision is not None
            started = time.monotonic()
            try:
                result = await fn(model)
            except Exception as error:
                retry = self._record_failure(walk, model, error, started, user, tier)
                if not retry:
                    raise
                continue
            tokens = usage(result) if usage is not None else (0, 0)
            self._record_success(walk, model, started, user, tier, tokens)
            return result

    def _record_failure(
        self,
        walk: FallbackWalk,
        model: str,
        error: BaseException,
        started: float,
        user: str | None,
        tier: str | None,
    ) -> bool:
        """Report one failed attempt; True when the next model should be tried."""
        assert walk.decision is not None
        failure = self.classifier.classify(error)
        latency_ms = int((time.monotonic() - started) * 1000)
        report_id = self.report(
            walk.context,
            model,
            outcome=failure.outcome,
            decision_id=walk.decision.decision_id,
            user=user,
            tier=tier,
            latency_ms=latency_ms,
            error_message=f"{type(error).__name__}: {error}",
            retry_after=failure.retry_after,
            provider_wide=failure.provider_wide,
        )
        walk.record(
            Attempt(model, failure.outcome, latency_ms, walk.decision.decision_id, report_id, error)
        )
        logger.info("modelroute: %s failed on %s: %s", walk.context, model, failure.outcome.name)
        return failure.retry_next_model

    def _record_success(
        self,
        walk: FallbackWalk,
        model: str,
        started: float,
        user: str | None,
        tier: str | None,
        tokens: tuple[int, int],
    ) -> None:
        assert walk.decision is not None
        latency_ms = int((time.monotonic() - started) * 1000)
        report_id = self.report(
            walk.context,
            model,
            decision_id=walk.decision.decision_id,
            user=user,
            tier=tier,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            latency_ms=latency_ms,
        )
        walk.record(Attempt(model, Outcome.OK, latency_ms, walk.decision.decision_id, report_id))


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """RetryInfo from the status details trailer, if the server sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return seconds
    return None
