"""Building usage reports (shared by the async and sync routers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2
from modelroute.v1 import router_pb2, types_pb2

from .decision import Outcome

MAX_ERROR_CHARS = 2000


def build_report(
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
    occurred_at: datetime | None = None,
    report_id: str | None = None,
) -> router_pb2.UsageReport:
    """A UsageReport with a fresh idempotency key and the time of the call.

    The time makes a report delivered late still land at the right minute.
    """
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(occurred_at or datetime.now(UTC))
    report = router_pb2.UsageReport(
        report_id=report_id or uuid.uuid4().hex,
        decision_id=decision_id,
        context=context,
        model_id=model_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_ms=max(latency_ms, 0),
        outcome=types_pb2.Outcome.ValueType(outcome.value),
        error_message=error_message[:MAX_ERROR_CHARS],
        provider_wide=provider_wide,
        occurred_at=when,
    )
    if user or tier:
        report.user.CopyFrom(types_pb2.User(id=user or "", tier=tier or ""))
    if retry_after is not None:
        duration = duration_pb2.Duration()
        duration.FromMilliseconds(int(retry_after * 1000))
        report.retry_after.CopyFrom(duration)
    return report
