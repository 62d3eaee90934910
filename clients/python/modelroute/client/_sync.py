"""ModelRouter: the blocking API, for code without an event loop (Flask, scripts, threads).

It runs an AsyncModelRouter on a private event loop in a daemon thread; your provider
calls (`fn`) run in your own thread, so blocking provider SDKs work unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from ._async import AsyncModelRouter
from ._reports import build_report
from ._sender import CloseResult, lost_message, rejection_message
from ._walk import FallbackWalk
from .decision import Decision
from .errors import (
    ControlPlaneUnavailableError,
    ControlPlaneUnavailableWarning,
    NoModelAvailableError,
    RejectedReport,
    ReportRejectedWarning,
)

T = TypeVar("T")


class ModelRouter:
    """Blocking client.

    Takes the same arguments as AsyncModelRouter. Call `close()` (or use `with`) on shutdown; an
    interpreter exit closes it too, delivering queued reports.
    """

    def __init__(self, target: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modelroute-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._close_result: CloseResult | None = None
        self.aio = AsyncModelRouter(target, **kwargs)
        self._run(self.aio.__aenter__())
        atexit.register(_close_at_exit, weakref.ref(self))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> ModelRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> CloseResult:
        """Deliver queued reports, disconnect and stop the background thread.

        Returns within `close_timeout`; see AsyncModelRouter.close for the result.
        """
        if self._closed:
            return self._close_result or CloseResult(0, 0, ())
        self._closed = True
        try:
            self._close_result = self._run(self.aio._close(warn=False))
            if self._close_result.undelivered:  # warned in the caller's thread
                warnings.warn(
                    lost_message(self._close_result, self.aio.options.close_timeout),
                    ControlPlaneUnavailableWarning,
                    stacklevel=2,
                )
            return self._close_result
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def resolve(
        self,
        context: str,
        *,
        user: str | None = None,
        tier: str | None = None,
        exclude_models: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> Decision:
        """See AsyncModelRouter.resolve."""
        decision, warning = self._run(
            self.aio._resolve(context, user, tier, exclude_models, attributes, request_id)
        )
        if warning:
            warnings.warn(warning, ControlPlaneUnavailableWarning, stacklevel=2)
        return decision

    def report(self, context: str, model_id: str, **fields: Any) -> str:
        """See AsyncModelRouter.report. Never blocks on the network."""
        report = build_report(context, model_id, **fields)
        self._loop.call_soon_threadsafe(self.aio.enqueue, report)
        return report.report_id

    def flush(self) -> list[RejectedReport]:
        """See AsyncModelRouter.flush."""
        rejected = self._run(self._flush_after_enqueued())
        if rejected:
            warnings.warn(rejection_message(rejected), ReportRejectedWarning, stacklevel=2)
        return rejected

    async def _flush_after_enqueued(self) -> list[RejectedReport]:
        # Runs after every enqueue callback scheduled before it (the loop is FIFO).
        self.aio._start()
        return await self.aio._reports.flush(warn=False)

    @property
    def rejected_reports(self) -> int:
        """See AsyncModelRouter.rejected_reports."""
        return self.aio.rejected_reports

    @property
    def rejections(self) -> list[RejectedReport]:
        """See AsyncModelRouter.rejections."""
        return self.aio.rejections

    def call_with_fallback(
        self,
        context: str,
        fn: Callable[[str], T],
        *,
        user: str | None = None,
        tier: str | None = None,
        attributes: Mapping[str, str] | None = None,
        usage: Callable[[T], tuple[int, int]] | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """See AsyncModelRouter.call_with_fallback; `fn` runs in the calling thread."""
        walk = FallbackWalk(context, max_attempts, user=user, tier=tier)
        decision = self.resolve(context, user=user, tier=tier, attributes=attributes)
        walk.offer(decision)
        while True:
            model = walk.next_model()
            if model is None:
                if not walk.can_re_resolve():
                    raise walk.exhausted()
                try:
                    decision, _ = self._run(
                        self.aio._resolve(context, user, tier, walk.excluded, attributes)
                    )
                except (NoModelAvailableError, ControlPlaneUnavailableError):
                    exhausted = walk.exhausted()
                    raise exhausted from exhausted.__cause__
                if not walk.offer(decision):
                    raise walk.exhausted()
                continue
            started = time.monotonic()
            try:
                result = fn(model)
            except Exception as error:
                if not walk.failed(model, error, started, self.aio.classifier, self.report):
                    raise
                continue
            tokens = usage(result) if usage is not None else (0, 0)
            walk.succeeded(model, started, tokens, self.report)
            return result


def _close_at_exit(ref: weakref.ReferenceType[ModelRouter]) -> None:
    router = ref()
    if router is not None:
        router.close()
