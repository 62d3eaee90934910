"""Exceptions and warnings raised by the SDK."""

from __future__ import annotations

import dataclasses

from .decision import Outcome


class ModelRouteError(Exception):
    """Base class for every error the SDK raises."""


class ControlPlaneUnavailableError(ModelRouteError):
    """modelroute is unreachable and nothing to fall back to.

    There is neither a last known answer nor a configured `default_model`.
    """


class InvalidResolveRequestError(ModelRouteError):
    """The server rejected the request as malformed (a caller bug, not an outage)."""


class NoModelAvailableError(ModelRouteError):
    """The server says no model of the chain may serve now (cooldowns, limits, budget)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReportDeliveryError(ModelRouteError):
    """Usage reports could not be delivered; they stay queued for the next flush."""


class ControlPlaneUnavailableWarning(RuntimeWarning):
    """A decision was made without the server (last known answer or static default)."""


class ReportRejectedWarning(UserWarning):
    """The server refused a usage report as invalid; it was dropped (the message says why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RejectedReport:
    """A usage report the server refused; `error` names the offending field, e.g.
    "input_tokens: -1 is outside 0..100,000,000".
    """

    report_id: str
    context: str
    model_id: str
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one model inside `call_with_fallback`."""

    model_id: str
    outcome: Outcome
    latency_ms: int
    decision_id: str
    report_id: str
    error: BaseException | None = None


class AllModelsFailedError(ModelRouteError):
    """Every model `call_with_fallback` could try failed.

    `attempts` lists them in order; the last provider error is the `__cause__`.
    """

    def __init__(self, context: str, attempts: list[Attempt]) -> None:
        self.context = context
        self.attempts = list(attempts)
        tried = "; ".join(
            f"{a.model_id}: {a.outcome.name}" + (f" ({a.error!r})" if a.error else "")
            for a in attempts
        )
        super().__init__(f"all models failed for {context!r}: {tried or 'no model to try'}")
