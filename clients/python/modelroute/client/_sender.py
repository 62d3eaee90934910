"""Usage report delivery: a bounded queue, batches sent in the background, and a close
that always returns within its timeout and says what it could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import warnings
from collections import deque
from collections.abc import Callable, Sequence

import grpc
from modelroute.v1 import router_pb2, router_pb2_grpc

from .errors import (
    ControlPlaneUnavailableWarning,
    RejectedReport,
    ReportDeliveryError,
    ReportRejectedWarning,
)

logger = logging.getLogger("modelroute.client")

MAX_REPORTS_PER_CALL = 1000  # ReportUsageRequest limit
RECENT_REJECTIONS = 100  # kept for `rejections`; older ones are only counted
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
class CloseResult:
    """What `close()` achieved. Counts cover the router's whole life."""

    delivered: int  # reports the server stored (or already had: retries are idempotent)
    rejected: int  # reports the server refused as invalid (see `rejections`)
    undelivered: tuple[str, ...]  # report ids still queued when close_timeout ran out

    @property
    def complete(self) -> bool:
        """True when every report reached the server (stored or rejected)."""
        return not self.undelivered


@dataclasses.dataclass(frozen=True, slots=True)
class SenderSettings:
    batch_size: int
    interval: float  # seconds a report may wait for its batch
    call_timeout: float
    max_pending: int
    close_timeout: float  # only for messages: close() gets its deadline


class ReportSender:
    """Queues reports and sends them in batches from one background task."""

    def __init__(
        self,
        settings: SenderSettings,
        metadata: tuple[tuple[str, str], ...] | None,
        on_rejected: Callable[[RejectedReport], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metadata = metadata
        self._on_rejected = on_rejected
        self._stub: router_pb2_grpc.ModelRouterServiceStub | None = None
        self._pending: deque[router_pb2.UsageReport] = deque()
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.rejected = 0
        self.lost = 0
        self.rejections: deque[RejectedReport] = deque(maxlen=RECENT_REJECTIONS)

    def start(self, stub: router_pb2_grpc.ModelRouterServiceStub) -> None:
        self._stub = stub
        self._task = asyncio.create_task(self._run(), name="modelroute-reports")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def enqueue(self, report: router_pb2.UsageReport, *, urgent: bool = False) -> None:
        """Queue a report; `urgent` sends it (and everything queued) at once."""
        self._pending.append(report)
        overflow = len(self._pending) - self._settings.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.lost += overflow
            logger.error("modelroute: report queue full, dropped %d oldest reports", overflow)
        if urgent or len(self._pending) >= self._settings.batch_size:
            self._wake.set()

    async def flush(
        self, deadline: float | None = None, *, warn: bool = True
    ) -> list[RejectedReport]:
        """Send every queued report now; returns the ones the server rejected (warned
        about here unless `warn` is False: the sync API warns in the caller's thread).
        Raises ReportDeliveryError when the server does not take them (they stay queued).
        """
        rejected: list[RejectedReport] = []
        async with self._send_lock:
            while self._pending:
                rejected += await self._send_batch(deadline)
        if rejected and warn:
            warnings.warn(rejection_message(rejected), ReportRejectedWarning, stacklevel=3)
        return rejected

    async def _send_batch(self, deadline: float | None) -> list[RejectedReport]:
        assert self._stub is not None
        size = min(len(self._pending), MAX_REPORTS_PER_CALL)
        batch = [self._pending.popleft() for _ in range(size)]
        timeout = self._settings.call_timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - asyncio.get_running_loop().time(), 0.001))
        try:
            reply = await self._stub.ReportUsage(
                router_pb2.ReportUsageRequest(reports=batch),
                timeout=timeout,
                metadata=self._metadata,
            )
        except asyncio.CancelledError:
            # Cancelled mid-call: keep the batch for the next try (the server dedups by
            # report_id if it did store it).
            self._pending.extendleft(reversed(batch))
            raise
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE_REPORT_CODES:
                self._pending.extendleft(reversed(batch))
                raise ReportDeliveryError(
                    f"ReportUsage failed ({error.code().name}): {error.details()}"
                ) from error
            # The whole call was refused (e.g. PERMISSION_DENIED): retrying cannot help.
            reason = f"{error.code().name}: {error.details()}"
            return self._reject([(report, reason) for report in batch])
        by_id = {report.report_id: report for report in batch}
        refused = []
        for result in reply.results:
            if result.status == router_pb2.REPORT_STATUS_REJECTED:
                refused.append((by_id[result.report_id], result.error))
        self.delivered += len(batch) - len(refused)
        return self._reject(refused)

    def _reject(
        self, refused: Sequence[tuple[router_pb2.UsageReport, str]]
    ) -> list[RejectedReport]:
        """Make refused reports visible: counter, recent list, log line, callback."""
        rejected = [
            RejectedReport(report.report_id, report.context, report.model_id, reason)
            for report, reason in refused
        ]
        if not rejected:
            return rejected
        self.rejected += len(rejected)
        self.rejections.extend(rejected)
        logger.warning(rejection_message(rejected))
        if self._on_rejected is not None:
            for rejection in rejected:
                try:
                    self._on_rejected(rejection)
                except Exception:  # a faulty callback must not stop delivery
                    logger.exception("modelroute: on_rejected callback failed")
        return rejected

    async def _run(self) -> None:
        """Send when a batch is full, a cooldown outcome arrives, or `interval` passes;
        back off while the server refuses.
        """
        backoff = self._settings.interval
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives just as the event is set, and the task never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._settings.interval
            except ReportDeliveryError as error:
                logger.warning("modelroute: %s; %d reports queued", error, len(self._pending))
                backoff = min(backoff * 2, 30.0)

    async def close(self, deadline: float, *, warn: bool = True) -> CloseResult:
        """Stop the background task and deliver what is queued, retrying until
        `deadline` (event loop time); never takes longer than that.
        """
        loop = asyncio.get_running_loop()
        if self._task is not None:
            await _stop_task(self._task, deadline)
        last_error = "close_timeout reached"
        while self._pending and self._stub is not None and loop.time() < deadline:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.flush(deadline)
            except TimeoutError:
                break
            except ReportDeliveryError as error:
                last_error = str(error)
                logger.info("modelroute: %s; retrying until close_timeout", error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await asyncio.sleep(0.2)
        result = CloseResult(
            self.delivered, self.rejected, tuple(r.report_id for r in self._pending)
        )
        if result.undelivered:
            self.lost += len(result.undelivered)
            self._pending.clear()
            message = lost_message(result, self._settings.close_timeout)
            logger.error("%s (%s)", message, last_error)
            if warn:
                warnings.warn(message, ControlPlaneUnavailableWarning, stacklevel=4)
        return result


def lost_message(result: CloseResult, close_timeout: float) -> str:
    return (
        f"modelroute: {len(result.undelivered)} usage reports lost: not delivered within "
        f"close_timeout ({close_timeout:g}s)"
    )


def rejection_message(rejected: Sequence[RejectedReport]) -> str:
    first = rejected[0]
    return (
        f"modelroute: {len(rejected)} usage report(s) rejected by the server and dropped; "
        f"first: {first.report_id} ({first.context}/{first.model_id}): {first.error}"
    )


async def _stop_task(task: asyncio.Task[None], deadline: float) -> None:
    """Cancel `task` and wait for it until `deadline` (never raises, never waits longer)."""
    loop = asyncio.get_running_loop()
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.error("modelroute: task %s did not stop before close_timeout", task.get_name())
            return
        # Re-cancel now and then: a cancellation swallowed by a library must not hold us.
        await asyncio.wait([task], timeout=min(remaining, 0.5))
    if not task.cancelled() and task.exception() is not None:
        logger.error("modelroute: task %s failed: %r", task.get_name(), task.exception())
