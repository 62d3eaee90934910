"""The fallback walk of `call_with_fallback`, without I/O.

The async and the sync routers share this one algorithm and differ only in how they
await.
"""

from __future__ import annotations

from collections import deque

from modelroute.client.decision import Decision
from modelroute.client.errors import AllModelsFailedError, Attempt

MAX_EXCLUDED = 32  # ResolveModelRequest.exclude_models limit


class FallbackWalk:
    """Models to try, each once.

    First the decision's model, then its fallbacks, then whatever a re-resolve that
    excludes every model already tried offers.
    """

    def __init__(self, context: str, max_attempts: int | None = None) -> None:
        self.context = context
        self.max_attempts = max_attempts
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

    def exhausted(self) -> AllModelsFailedError:
        error = AllModelsFailedError(self.context, self.attempts)
        last = next((a.error for a in reversed(self.attempts) if a.error), None)
        error.__cause__ = last
        return error
