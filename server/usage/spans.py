"""GenAI spans for a ReportUsage call: one child span per (provider, model) in the call.

One span per report made span export the main cost of ingestion (a 100-report call became
101 spans to build, serialise and send). Reports of one model in one call are summed
instead: token counts, cost, errors, and the contexts they came from. A call with a single
report still gets exactly that report's span (with its report_id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelroute.storage.usage_store import UsageRecord
from opentelemetry import trace

tracer = trace.get_tracer("modelroute.router")


def annotate_usage(records: Sequence[UsageRecord]) -> None:
    """Child spans of the current (ReportUsage) span, with gen_ai.* attributes."""
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
