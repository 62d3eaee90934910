"""Spans of ModelRouterService: one per usage call, one per report (the decision span:
telemetry/decision_spans.py).

Attributes follow OpenTelemetry's GenAI semantic conventions where they exist; user ids
never leave the process in clear (`hash_user`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from modelroute.server.api.errors import ServiceError, ServicerContext
from modelroute.server.telemetry.decision_spans import hash_user as hash_user
from modelroute.storage.usage_store import UsageRecord
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

tracer = trace.get_tracer("modelroute.router")
_propagator: Final = TraceContextTextMapPropagator()


def parent_context(context: ServicerContext) -> otel_context.Context | None:
    """The caller's trace context (W3C `traceparent`), if it sent one."""
    metadata = context.invocation_metadata() or ()
    carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
    return _propagator.extract(carrier) if carrier else None


def server_span(name: str, context: ServicerContext) -> trace.Span:
    """A SERVER span for one call, child of the caller's span when it sent one."""
    return tracer.start_span(name, context=parent_context(context), kind=trace.SpanKind.SERVER)


def mark_failed(span: trace.Span, error: ServiceError, context_name: str | None = None) -> None:
    """Record on the span why the call failed."""
    if context_name is not None:
        span.set_attribute("modelroute.context", context_name[:128])
        span.set_attribute("modelroute.error", error.reason)
    span.set_status(trace.StatusCode.ERROR, error.message)


def annotate_usage(records: Sequence[UsageRecord]) -> None:
    """One child span per report with the GenAI usage attributes (token usage per call)."""
    for record in records:
        with tracer.start_as_current_span(f"usage {record.model_id}") as child:
            child.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": record.provider,
                    "gen_ai.request.model": record.model_id,
                    "gen_ai.usage.input_tokens": record.input_tokens,
                    "gen_ai.usage.output_tokens": record.output_tokens,
                    "modelroute.context": record.context,
                    "modelroute.outcome": record.outcome,
                    "modelroute.report_id": record.report_id,
                    "modelroute.estimated_cost_usd": record.estimated_cost,
                }
            )
            if record.outcome != "OK":
                child.set_attribute("error.type", record.outcome)
