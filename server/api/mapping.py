"""Protobuf mapping: domain values ↔ `modelroute.v1` / `modelroute.admin.v1` messages.

Shared by ModelRouterService and AdminService (e.g. the model list), so a field is
filled the same way in every answer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from google.protobuf import duration_pb2, timestamp_pb2
from modelroute.storage.preference_store import FeedbackRecord, StoredPreference
from modelroute.storage.usage_store import UsageRecord
from modelroute.v1 import router_pb2, types_pb2

from ..core.decision_token import (
    DecisionToken,
    DecisionTokens,
    MalformedTokenError,
    UnknownTokenError,
)
from ..core.resolver import Decision
from ..core.snapshot import Snapshot
from .errors import invalid_argument, not_found
from .validation import (
    MAX_COMMENT,
    MAX_ERROR_MESSAGE,
    MAX_FUTURE_SKEW,
    REQUIRED,
    TIMESTAMP_RULE,
    Violation,
    report_violation,
)

OUTCOMES: Final = {
    v.number: v.name.removeprefix("OUTCOME_")
    for v in types_pb2.DESCRIPTOR.enum_types_by_name["Outcome"].values
    if v.number
}
THUMBS: Final = {router_pb2.THUMBS_UP: "UP", router_pb2.THUMBS_DOWN: "DOWN"}
FEEDBACK_SOURCES: Final = {
    router_pb2.FEEDBACK_SOURCE_UNSPECIFIED: "USER",
    router_pb2.FEEDBACK_SOURCE_USER: "USER",
    router_pb2.FEEDBACK_SOURCE_REVIEWER: "REVIEWER",
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration (negative values clamp to zero)."""
    seconds = max(0.0, seconds)
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def model_list(snapshot: Snapshot | None, tier: str = "") -> router_pb2.ListModelsResponse:
    """Models sorted by id: every one (tier empty, operators), or those the tier may choose."""
    if snapshot is None:
        return router_pb2.ListModelsResponse()
    return router_pb2.ListModelsResponse(
        models=[
            types_pb2.ModelInfo(
                model_id=m.model_id,
                provider=m.provider,
                tiers=sorted(m.tiers),
                input_usd_per_mtok=m.input_usd_per_mtok,
                output_usd_per_mtok=m.output_usd_per_mtok,
                enabled=m.enabled,
            )
            for m in sorted(snapshot.models.values(), key=lambda m: m.model_id)
            if not tier or (m.enabled and m.allows_tier(tier))
        ]
    )


def decision_response(decision: Decision, decision_id: str) -> router_pb2.ResolveModelResponse:
    """The ResolveModel answer for a decision and its signed id."""
    response = router_pb2.ResolveModelResponse()
    # Copying a prepared message is several times cheaper than building one field by field.
    response.CopyFrom(_answer_without_id(decision))
    response.decision_id = decision_id
    return response


@functools.lru_cache(maxsize=4096)
def _answer_without_id(decision: Decision) -> router_pb2.ResolveModelResponse:
    """Everything but the decision id: the same for every decision with this outcome (a
    few per context and config revision). Shared: callers copy it, never change it."""
    response = router_pb2.ResolveModelResponse(
        model_id=decision.model_id,
        provider=decision.provider,
        fallback_model_ids=decision.fallback_model_ids,
        reason=types_pb2.Reason.ValueType(decision.reason),
        experiment_id=decision.experiment_id,
        variant_id=decision.variant_id,
        config_revision=decision.config_revision,
        warnings=decision.warnings,
        cache_ttl=duration(decision.cache_ttl_seconds),
    )
    if decision.fallback_cause is not None:
        response.fallback.from_model_id = decision.fallback_from
        response.fallback.cause = types_pb2.FallbackCause.ValueType(decision.fallback_cause)
    return response


def preference_message(stored: StoredPreference) -> router_pb2.UserPreference:
    """A stored preference as the API shows it."""
    return router_pb2.UserPreference(
        user_id=stored.user_id,
        context=stored.context,
        model_id=stored.model_id,
        updated_at=timestamp(stored.updated_at),
    )


def usage_record(
    report: router_pb2.UsageReport,
    snapshot: Snapshot,
    now: datetime,
    trace_id: str,
    tokens: DecisionTokens,
) -> UsageRecord:
    """The row for one usage report. Raises ValueError (`field: why`) to reject it alone."""
    problem = report_violation(report)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    try:
        occurred = (
            report.occurred_at.ToDatetime(tzinfo=UTC) if report.HasField("occurred_at") else now
        )
    except (ValueError, OverflowError):
        raise ValueError(f"occurred_at: {TIMESTAMP_RULE}") from None
    if occurred > now + MAX_FUTURE_SKEW:
        raise ValueError("occurred_at: more than 5 minutes in the future")
    token: DecisionToken | None = None
    if report.decision_id:
        try:
            token = tokens.decode(report.decision_id)
        except (MalformedTokenError, UnknownTokenError) as exc:
            raise ValueError(f"decision_id: {exc}") from None
    model = snapshot.models.get(report.model_id)
    retry_after_ms = None
    if report.HasField("retry_after"):
        retry_after_ms = int(report.retry_after.ToMilliseconds())
    return UsageRecord(
        report_id=report.report_id,
        decision_id=report.decision_id or None,
        context=report.context,
        model_id=report.model_id,
        # A model deleted from the config still gets its usage logged, at no known price.
        provider=model.provider if model else "unknown",
        outcome=OUTCOMES[report.outcome],
        user_id=report.user.id or None,
        tier=report.user.tier or None,
        input_tokens=report.input_tokens,
        output_tokens=report.output_tokens,
        latency_ms=report.latency_ms,
        estimated_cost=model.cost_usd(report.input_tokens, report.output_tokens) if model else 0.0,
        error_message=report.error_message[:MAX_ERROR_MESSAGE] or None,
        retry_after_ms=retry_after_ms,
        experiment_id=(token.experiment_id or None) if token else None,
        variant_id=(token.variant_id or None) if token else None,
        reason=reason_name(token.reason) if token else None,
        config_revision=snapshot.revision,
        trace_id=trace_id if trace_id.strip("0") else None,
        created_at=occurred,
    )


def usage_records(
    reports: Sequence[router_pb2.UsageReport],
    snapshot: Snapshot,
    now: datetime,
    trace_id: str,
    tokens: DecisionTokens,
) -> tuple[list[router_pb2.ReportResult], list[UsageRecord], list[int]]:
    """A result per report (invalid ones REJECTED, with why); records and their positions
    for the valid ones."""
    results: list[router_pb2.ReportResult] = []
    records: list[UsageRecord] = []
    positions: list[int] = []
    for index, report in enumerate(reports):
        result = router_pb2.ReportResult(report_id=report.report_id)
        results.append(result)
        try:
            records.append(usage_record(report, snapshot, now, trace_id, tokens))
            positions.append(index)
        except ValueError as exc:
            result.status = router_pb2.REPORT_STATUS_REJECTED
            result.error = str(exc)
    return results, records, positions


def reason_name(number: int) -> str | None:
    """`CONTEXT_DEFAULT` for the Reason enum's number; None for numbers it does not know."""
    try:
        return types_pb2.Reason.Name(types_pb2.Reason.ValueType(number)).removeprefix("REASON_")
    except ValueError:
        return None


def feedback_record(
    request: router_pb2.SubmitFeedbackRequest, tokens: DecisionTokens, now: datetime
) -> FeedbackRecord:
    """The row for a feedback call; INVALID_ARGUMENT, or NOT_FOUND for an unknown decision."""
    violations: list[Violation] = []
    thumbs = THUMBS.get(request.thumbs)
    if request.thumbs and thumbs is None:
        violations.append(("thumbs", "THUMBS_UP or THUMBS_DOWN"))
    has_score = request.HasField("quality_score")
    if has_score and not 0.0 <= request.quality_score <= 1.0:  # NaN fails this too
        violations.append(("quality_score", f"{request.quality_score} is outside 0..1"))
    if thumbs is None and not has_score:
        violations.append(("thumbs", "give thumbs or a quality_score (or both)"))
    source = FEEDBACK_SOURCES.get(request.source)
    if source is None:
        violations.append(("source", "USER or REVIEWER"))
    if len(request.comment) > MAX_COMMENT:
        violations.append(("comment", f"at most {MAX_COMMENT} characters"))
    token: DecisionToken | None = None
    if not request.decision_id:
        violations.append(("decision_id", f"{REQUIRED} (the decision_id ResolveModel returned)"))
    else:
        try:
            token = tokens.decode(request.decision_id)
        except MalformedTokenError as exc:
            violations.append(("decision_id", str(exc)))
        except UnknownTokenError as exc:
            if not violations:
                raise not_found("DECISION_NOT_FOUND", str(exc)) from None
    if violations or token is None or source is None:
        raise invalid_argument(violations)
    return FeedbackRecord(
        decision_id=request.decision_id,
        thumbs=thumbs,
        quality_score=request.quality_score if has_score else None,
        source=source,
        comment=request.comment or None,
        experiment_id=token.experiment_id or None,
        variant_id=token.variant_id or None,
        model_id=token.model_id,
        context=token.context,
        created_at=now,
    )
