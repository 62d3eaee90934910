"""The fallback walk of `call_with_fallback`: which model to try next, and what each try
reports (through the router's `report`, which only queues).

The async and the sync routers share this one algorithm and differ only in how they
await.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from .classify import FailureClassifier
from .decision import Decision, Outcome
from .errors import AllModelsFailedError, Attempt

logger = logging.getLogger("modelroute.client")
Report = Callable[..., str]  # the router's `report(context, model_id, **fields)`

MAX_EXCLUDED = 32  # ResolveModelRequest.exclude_models limit


class FallbackWalk:
    """Models to try, each once.

    First the decision's model, then its fallbacks, then whatever a re-resolve that
    excludes every model already tried offers.
    """

    def __init__(
        self,
        context: str,
        max_attempts: int | None = None,
        *,
        user: str | None = None,
        tier: str | None = None,
    ) -> None:
        self.context = context
        self.max_attempts = max_attempts
        self.user = user
        self.tier = tier
        self.attempts: list[Attempt] = []
        self.decision: Decision | None = None
        self._tried: list[str] = []
        self._queue: deque[str] = deque()

    def offer(self, decision: Decision) -> bool:
        """Queue the decision's untried models; False when it brings nothing new."""
        self.decision = decision
        self._queue = deque(m for m in decision.models if m and m not in self._tried)
        return bool(self._queue)

    def next_model(self) -> str | None:
        """The next model to try; None when the decision or the attempt budget is used up."""
        if self.max_attempts is not None and len(self.attempts) >= self.max_attempts:
            self._queue.clear()
            return None
        if not self._queue:
            return None
        model = self._queue.popleft()
        self._tried.append(model)
        return model

    def can_re_resolve(self) -> bool:
        budget_left = self.max_attempts is None or len(self.attempts) < self.max_attempts
        return budget_left and 0 < len(self._tried) <= MAX_EXCLUDED

    @property
    def excluded(self) -> tuple[str, ...]:
        return tuple(self._tried)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def failed(
        self,
        model: str,
        error: BaseException,
        started: float,
        classifier: FailureClassifier,
        report: Report,
    ) -> bool:
        """Report and record one failed try (`started`: its time.monotonic()); True when
        the next model should be tried.
        """
        assert self.decision is not None
        failure = classifier.classify(error)
        latency_ms = int((time.monotonic() - started) * 1000)
        report_id = report(
            self.context,
            model,
            outcome=failure.outcome,
            decision_id=self.decision.decision_id,
            user=self.user,
            tier=self.tier,
            latency_ms=latency_ms,
            error_message=f"{type(error).__name__}: {error}",
            retry_after=failure.retry_after,
            provider_wide=failure.provider_wide,
        )
        self.record(
            Attempt(model, failure.outcome, latency_ms, self.decision.decision_id, report_id, error)
        )
        logger.info("modelroute: %s failed on %s: %s", self.context, model, failure.outcome.name)
        return failure.retry_next_model

    def succeeded(
        self, model: str, started: float, tokens: tuple[int, int], report: Report
    ) -> None:
        """Report and record the try that worked."""
        assert self.decision is not None
        latency_ms = int((time.monotonic() - started) * 1000)
        report_id = report(
            self.context,
            model,
            decision_id=self.decision.decision_id,
            user=self.user,
            tier=self.tier,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            latency_ms=latency_ms,
        )
        self.record(Attempt(model, Outcome.OK, latency_ms, self.decision.decision_id, report_id))

    def exhausted(self) -> AllModelsFailedError:
        error = AllModelsFailedError(self.context, self.attempts)
        last = next((a.error for a in reversed(self.attempts) if a.error), None)
        error.__cause__ = last
        return error
