"""Request validation for ModelRouterService: one rule per field kind, one message per rule.

Each rule is checked and worded in one place, so the same field gets the same answer in
every RPC (e.g. `user.tier` in ResolveModel, SetUserPreference and usage reports).
Checks return `(field, message)` violations; `invalid_argument` turns them into one
INVALID_ARGUMENT status with a BadRequest detail.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Final

import grpc
from google.protobuf import timestamp_pb2
from modelroute.v1 import router_pb2, types_pb2

from ..core.config_values import ID_PATTERN
from ..core.snapshot import Snapshot
from .errors import ServiceError, invalid_argument

Violation = tuple[str, str]

CONTEXT_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
TIER_PATTERN: Final = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
USER_ID_MAX: Final = 256
MODEL_ID_MAX: Final = 128
REQUEST_ID_MAX: Final = 128
REPORT_ID_MAX: Final = 128
MAX_ATTRIBUTES: Final = 32
ATTRIBUTE_KEY_MAX: Final = 64
ATTRIBUTE_VALUE_MAX: Final = 256
MAX_EXCLUDED: Final = 32
MAX_REPORTS: Final = 1000
MAX_TOKENS: Final = 100_000_000
MAX_LATENCY_MS: Final = 86_400_000
MAX_ERROR_MESSAGE: Final = 2000
MAX_COMMENT: Final = 2000
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
MAX_RETRY_AFTER: Final = timedelta(days=1)

# The messages, one per rule.
CONTEXT_RULE: Final = "1-128 characters of letters, digits and . _ : / - (e.g. rag.answer)"
TIER_RULE: Final = "at most 64 characters of letters, digits and . _ -"
USER_ID_RULE: Final = f"at most {USER_ID_MAX} characters"
REQUIRED: Final = "required"
TIMESTAMP_RULE: Final = "a timestamp between years 0001 and 9999"


@functools.lru_cache(maxsize=4096)
def _is_context(context: str) -> bool:
    # Cached: every usage report names one of a few contexts (ingestion's hot path).
    return CONTEXT_PATTERN.match(context) is not None


def context_violation(field: str, context: str) -> Violation | None:
    """A context name: 1-128 characters of letters, digits and `. _ : / -`."""
    return None if _is_context(context) else (field, CONTEXT_RULE)


def tier_violation(field: str, tier: str) -> Violation | None:
    """A tier: empty, or at most 64 letters, digits and `. _ -`."""
    return None if TIER_PATTERN.match(tier) else (field, TIER_RULE)


def user_id_violation(field: str, user_id: str, *, required: bool = False) -> Violation | None:
    """A user id: at most 256 characters (and present, when `required`)."""
    if required and not user_id:
        return (field, REQUIRED)
    return (field, USER_ID_RULE) if len(user_id) > USER_ID_MAX else None


def timestamp_value(field: str, stamp: timestamp_pb2.Timestamp) -> datetime:
    """An aware datetime; INVALID_ARGUMENT for a Timestamp outside years 0001-9999."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise invalid_argument([(field, TIMESTAMP_RULE)]) from None


def raise_if_invalid(violations: list[Violation]) -> None:
    """INVALID_ARGUMENT listing every violation, if there is any."""
    if violations:
        raise invalid_argument(violations)


def found(*checks: Violation | None) -> list[Violation]:
    """The violations among `checks` (None: the check passed)."""
    return [check for check in checks if check is not None]


@functools.lru_cache(maxsize=1024)
def _is_tier(tier: str) -> bool:
    return TIER_PATTERN.match(tier) is not None


def validate_resolve(request: router_pb2.ResolveModelRequest) -> list[Violation]:
    """Everything wrong with a ResolveModel request (empty: valid)."""
    user = request.user
    if (
        _is_context(request.context)
        and len(user.id) <= USER_ID_MAX
        and _is_tier(user.tier)
        and not request.attributes
        and not request.exclude_models
        and len(request.request_id) <= REQUEST_ID_MAX
    ):
        return []  # the common request, checked without building anything
    violations = found(
        context_violation("context", request.context),
        user_id_violation("user.id", user.id),
        tier_violation("user.tier", user.tier),
    )
    if len(request.attributes) > MAX_ATTRIBUTES:
        violations.append(("attributes", f"at most {MAX_ATTRIBUTES} entries"))
    for key, value in request.attributes.items():
        if not key or len(key) > ATTRIBUTE_KEY_MAX or len(value) > ATTRIBUTE_VALUE_MAX:
            violations.append(
                (
                    f"attributes[{key[:ATTRIBUTE_KEY_MAX]}]",
                    f"keys 1-{ATTRIBUTE_KEY_MAX}, values 0-{ATTRIBUTE_VALUE_MAX} characters",
                )
            )
    if len(request.exclude_models) > MAX_EXCLUDED:
        violations.append(("exclude_models", f"at most {MAX_EXCLUDED} models"))
    for index, model in enumerate(request.exclude_models):
        if len(model) > MODEL_ID_MAX:
            violations.append((f"exclude_models[{index}]", f"at most {MODEL_ID_MAX} characters"))
    if len(request.request_id) > REQUEST_ID_MAX:
        violations.append(("request_id", f"at most {REQUEST_ID_MAX} characters"))
    return violations


def validate_reports(request: router_pb2.ReportUsageRequest) -> list[Violation]:
    """What is wrong with a ReportUsage call as a whole (each report is checked alone)."""
    if not request.reports:
        return [("reports", "at least one report is required")]
    if len(request.reports) > MAX_REPORTS:
        return [("reports", f"at most {MAX_REPORTS} per call")]
    return []


_OUTCOMES: Final = frozenset(types_pb2.Outcome.values())  # values() builds a list per call


def report_violation(report: router_pb2.UsageReport) -> Violation | None:
    """The first thing wrong with one usage report (it is rejected alone), or None."""
    if not 1 <= len(report.report_id) <= REPORT_ID_MAX:
        return ("report_id", f"1-{REPORT_ID_MAX} characters required (the idempotency key)")
    if (problem := context_violation("context", report.context)) is not None:
        return problem
    if not ID_PATTERN.match(report.model_id):
        return ("model_id", "a model id is required")
    for name, value, limit in (
        ("input_tokens", report.input_tokens, MAX_TOKENS),
        ("output_tokens", report.output_tokens, MAX_TOKENS),
        ("latency_ms", report.latency_ms, MAX_LATENCY_MS),
    ):
        if not 0 <= value <= limit:
            return (name, f"{value} is outside 0..{limit:,}")
    if not report.outcome or report.outcome not in _OUTCOMES:
        return ("outcome", "required (OK, RATE_LIMITED, QUOTA_EXCEEDED, ...)")
    if report.HasField("retry_after") and not (
        0 <= report.retry_after.ToNanoseconds() <= MAX_RETRY_AFTER.total_seconds() * 1e9
    ):
        return ("retry_after", f"between 0 and {MAX_RETRY_AFTER.days * 24} hours")
    # Column limits matter: on PostgreSQL one over-long value fails the whole group commit.
    return user_id_violation("user.id", report.user.id) or tier_violation(
        "user.tier", report.user.tier
    )


def preference_violations(user_field: str, user_id: str, context: str) -> list[Violation]:
    """What Get/SetUserPreference share: a user id, and a context if one is named."""
    return found(
        user_id_violation(user_field, user_id, required=True),
        context_violation("context", context) if context else None,
    )


def set_preference_violations(request: router_pb2.SetUserPreferenceRequest) -> list[Violation]:
    """Everything wrong with a SetUserPreference request (empty: valid)."""
    violations = preference_violations("user.id", request.user.id, request.context)
    if not request.model_id:
        violations.append(("model_id", REQUIRED))
    return violations + found(tier_violation("user.tier", request.user.tier))


def check_choosable(snapshot: Snapshot, context_name: str, model_id: str, tier: str) -> None:
    """FAILED_PRECONDITION unless users of `tier` may pick `model_id` (for `context_name`)."""
    if context_name:
        spec = snapshot.contexts.get(context_name)
        if spec is None or not spec.user_selectable:
            selectable = sorted(c.name for c in snapshot.contexts.values() if c.user_selectable)
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "CONTEXT_NOT_SELECTABLE",
                f"context {context_name!r} does not let users choose a model; "
                f"contexts that do: {', '.join(selectable) or 'none'}",
                precondition_violations=[("CONTEXT", context_name, "not user-selectable")],
            )
    allowed = sorted(
        m.model_id for m in snapshot.models.values() if m.enabled and m.allows_tier(tier)
    )
    if model_id in allowed:
        return
    model = snapshot.models.get(model_id)
    if model is None:
        why = "unknown model"
    elif not model.enabled:
        why = "model is disabled"
    else:
        why = f"model is for tiers {', '.join(sorted(model.tiers))} only"
    raise ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "MODEL_NOT_ALLOWED",
        f"{model_id!r} cannot be chosen by tier {tier or '(none)'!r} ({why}); "
        f"allowed: {', '.join(allowed) or 'none'}",
        precondition_violations=[("TIER", model_id, why)]
        + [("ALLOWED", allowed_id, "may be chosen by this tier") for allowed_id in allowed],
        metadata={"tier": tier, "allowed_models": ",".join(allowed)},
    )
