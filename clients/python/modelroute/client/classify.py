"""Turn a provider exception into an Outcome and a retry decision.

Provider SDKs disagree on how they signal "slow down": HTTP status attributes, gRPC
status codes, or only words in the message. The classifier is an ordered table of rules;
the first rule that returns a `Failure` wins. Add your own rules in front with
`FailureClassifier.add`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .decision import Outcome


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """How one failed attempt is reported and whether the next model is tried."""

    outcome: Outcome
    retry_next_model: bool
    retry_after: float | None = None  # seconds, when the provider said
    provider_wide: bool = False  # the provider said the limit covers all its models


Rule = Callable[[BaseException], Failure | None]

_QUOTA_WORDS = re.compile(r"quota|resource[ _]?exhausted|insufficient_quota|billing", re.I)
_RATE_WORDS = re.compile(r"rate[ _-]?limit|too many requests|\b429\b", re.I)
_FILTER_WORDS = re.compile(r"content[ _-]?(filter|policy)|safety|blocked", re.I)
_TIMEOUT_WORDS = re.compile(r"timed? ?out|deadline", re.I)
_INVALID_WORDS = re.compile(r"invalid[ _]request|bad request|context length|too long", re.I)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, as OpenAI, Anthropic, httpx and requests do.

    Looks at `status_code`, `status` and `http_status`, on the exception or on
    `exc.response`.
    """
    for owner in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "http_status", "status"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds to wait, from a `retry_after` attribute or a Retry-After header."""
    for name in ("retry_after", "retry_after_seconds"):
        value = getattr(exc, name, None)
        if isinstance(value, timedelta):
            return max(value.total_seconds(), 0.0)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(float(value), 0.0)
    for owner in (exc, getattr(exc, "response", None)):
        headers = getattr(owner, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            parsed = _retry_after_header(headers)
            if parsed is not None:
                return parsed
    return None


def _retry_after_header(headers: Mapping[str, Any]) -> float | None:
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return None if value is None else str(value)


def _grpc_code_name(exc: BaseException) -> str | None:
    """The gRPC status name (e.g. "RESOURCE_EXHAUSTED") without importing grpc types."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            value = code()
        except Exception:  # noqa: BLE001 - a foreign object's code() may do anything
            return None
        name = getattr(value, "name", None)
        return name if isinstance(name, str) else None
    return None


def _by_http_status(exc: BaseException) -> Failure | None:
    status = http_status(exc)
    if status is None:
        return None
    text = str(exc)
    if status == 429:
        outcome = Outcome.QUOTA_EXCEEDED if _QUOTA_WORDS.search(text) else Outcome.RATE_LIMITED
        return Failure(outcome, True, retry_after_of(exc))
    if status in (408, 504):
        return Failure(Outcome.TIMEOUT, True)
    if status >= 500:
        return Failure(Outcome.SERVER_ERROR, True, retry_after_of(exc))
    if status in (400, 422):
        if _FILTER_WORDS.search(text):
            return Failure(Outcome.CONTENT_FILTERED, False)
        return Failure(Outcome.INVALID_REQUEST, False)
    # 401/403/404 and friends: this model or provider is unusable; another may work.
    return Failure(Outcome.OTHER, True)


def _by_grpc_status(exc: BaseException) -> Failure | None:
    name = _grpc_code_name(exc)
    if name == "RESOURCE_EXHAUSTED":
        outcome = Outcome.RATE_LIMITED if _RATE_WORDS.search(str(exc)) else Outcome.QUOTA_EXCEEDED
        return Failure(outcome, True, retry_after_of(exc))
    if name == "DEADLINE_EXCEEDED":
        return Failure(Outcome.TIMEOUT, True)
    if name in ("UNAVAILABLE", "INTERNAL", "UNKNOWN"):
        return Failure(Outcome.SERVER_ERROR, True)
    if name in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        if _FILTER_WORDS.search(str(exc)):
            return Failure(Outcome.CONTENT_FILTERED, False)
        return Failure(Outcome.INVALID_REQUEST, False)
    return None


def _by_type(exc: BaseException) -> Failure | None:
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return Failure(Outcome.TIMEOUT, True)
    return None


def _by_message(exc: BaseException) -> Failure | None:
    text = f"{type(exc).__name__}: {exc}"
    if _QUOTA_WORDS.search(text):
        return Failure(Outcome.QUOTA_EXCEEDED, True, retry_after_of(exc))
    if _RATE_WORDS.search(text):
        return Failure(Outcome.RATE_LIMITED, True, retry_after_of(exc))
    if _FILTER_WORDS.search(text):
        return Failure(Outcome.CONTENT_FILTERED, False)
    if _TIMEOUT_WORDS.search(text):
        return Failure(Outcome.TIMEOUT, True)
    if _INVALID_WORDS.search(text):
        return Failure(Outcome.INVALID_REQUEST, False)
    return None


DEFAULT_RULES: tuple[Rule, ...] = (_by_http_status, _by_grpc_status, _by_type, _by_message)


class FailureClassifier:
    """Ordered rules; unknown failures are OTHER and the next model is tried.

    A broken model must not take the feature down.
    """

    def __init__(self, rules: tuple[Rule, ...] = DEFAULT_RULES) -> None:
        self._rules: list[Rule] = list(rules)

    def add(self, rule: Rule) -> None:
        """Put `rule` in front of the existing ones (most specific first)."""
        self._rules.insert(0, rule)

    def add_type(
        self, exc_type: type[BaseException], outcome: Outcome, retry_next_model: bool = True
    ) -> None:
        """Shorthand: every `exc_type` is `outcome` (retry_after still read from it)."""

        def rule(exc: BaseException) -> Failure | None:
            if isinstance(exc, exc_type):
                return Failure(outcome, retry_next_model, retry_after_of(exc))
            return None

        self.add(rule)

    def classify(self, exc: BaseException) -> Failure:
        """What kind of failure `exc` is, by the first rule that matches."""
        for rule in self._rules:
            failure = rule(exc)
            if failure is not None:
                if failure.retry_after is None and failure.outcome.starts_cooldown:
                    failure = dataclasses.replace(failure, retry_after=retry_after_of(exc))
                return failure
        return Failure(Outcome.OTHER, True, retry_after_of(exc))
