"""Spans of ModelRouterService: one per usage call and one per model in it (one per report
made span export the main cost of ingestion: a 100-report call was 101 spans to build,
serialise and send; now reports of one model are summed). The decision span is built in one
step by telemetry/decision_spans.py.

Attributes follow OpenTelemetry's GenAI semantic conventions where they exist; user ids
never leave the process in clear (`hash_user`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from modelroute.storage.usage_store import UsageRecord
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..telemetry.decision_spans import hash_user as hash_user
from .errors import ServiceError, ServicerContext

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
    """Child spans of the current (ReportUsage) span with gen_ai.* attributes, one per
    (provider, model): summed tokens and cost, report and error counts, the contexts. A
    single report keeps its own context, outcome and report_id."""
    groups: dict[tuple[str, str], list[UsageRecord]] = {}
    for record in records:
        groups.setdefault((record.provider, record.model_id), []).append(record)
    for (provider, model), members in groups.items():
        first = members[0]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": sum(r.input_tokens for r in members),
            "gen_ai.usage.output_tokens": sum(r.output_tokens for r in members),
            "modelroute.reports": len(members),
            "modelroute.estimated_cost_usd": sum(r.estimated_cost for r in members),
        }
        errors = [r.outcome for r in members if r.outcome != "OK"]
        if len(members) == 1:
            attributes["modelroute.context"] = first.context
            attributes["modelroute.outcome"] = first.outcome
            attributes["modelroute.report_id"] = first.report_id
        else:
            attributes["modelroute.contexts"] = sorted({r.context for r in members})
            attributes["modelroute.errors"] = len(errors)
        if errors:
            attributes["error.type"] = max(set(errors), key=errors.count)  # the most common
        tracer.start_span(f"usage {model}", attributes=attributes).end()
