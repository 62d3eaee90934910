"""The `modelroute.resolve` span of every decision, built in one step when the answer is known.

A span opened at the start of the call and annotated attribute by attribute costs about
twice what one created at the end does (with the call's start time and all attributes at
once): the SDK copies and checks attributes on every `set_attribute`, and attaching the span
as the current context is a context switch in and out. No child span is opened while a
decision is made, so nothing needs the span to be current.

When spans are exported through `export.OffloadingSpanProcessor` with the default sampler,
the decision span does not go through the SDK at all: the same record the processor would
build from an SDK span (ids, parent, times, attributes) is queued directly, about a tenth of
the cost. With export off nothing would read the span, and none is built.
"""

from __future__ import annotations

import functools
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .export import SpanRecord
from .semconv import feature_flag_attributes

tracer = trace.get_tracer("modelroute.router")
_propagator: Final = TraceContextTextMapPropagator()
_TRACE_HEADERS: Final = ("traceparent", "tracestate")
SPAN_NAME: Final = "modelroute.resolve"
_SERVER_KIND: Final = trace.SpanKind.SERVER.value
_UNSET: Final = StatusCode.UNSET.value
_SCOPE: Final = ("modelroute.router", None)
# Set by `use_direct_export` (tracing.configure_tracing); None/False: through the SDK.
_direct: Callable[[SpanRecord], None] | None = None
_skip = False


@functools.lru_cache(maxsize=4096)
def hash_user(user_id: str) -> str:
    """User ids never leave the process in clear (spans): a short stable digest instead."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:16] if user_id else ""


def parent_context(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> otel_context.Context | None:
    """The caller's trace (W3C `traceparent`), if it sent one."""
    carrier = {k: v for k, v in metadata or () if k in _TRACE_HEADERS}
    return _propagator.extract(carrier) if carrier else None


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class DecisionFields(Protocol):
    """What the span says about a decision (`core.resolver.Decision` has these)."""

    @property
    def model_id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def reason(self) -> _Named: ...
    @property
    def experiment_id(self) -> str: ...
    @property
    def variant_id(self) -> str: ...
    @property
    def config_revision(self) -> int: ...
    @property
    def fallback_cause(self) -> _Named | None: ...
    @property
    def fallback_from(self) -> str: ...


def record_decision(
    metadata: Callable[[], Sequence[tuple[str, str | bytes]] | None],
    started_ns: int,
    context: str,
    user_id: str,
    tier: str,
    request_id: str,
    decision: DecisionFields,
) -> None:
    """One finished SERVER span for a decision, with the documented attributes.

    `metadata` returns the call's metadata (`ServicerContext.invocation_metadata`): it is
    read only when a span is built (export off: never)."""
    if _skip:
        return
    attributes = {
        **_decision_attributes(
            context,
            decision.model_id,
            decision.provider,
            decision.reason.name,
            decision.experiment_id,
            decision.variant_id,
            decision.config_revision,
            None if decision.fallback_cause is None else decision.fallback_cause.name,
            decision.fallback_from,
        ),
        "modelroute.user_hash": hash_user(user_id),
        "modelroute.tier": tier,
    }
    if request_id:
        attributes["modelroute.request_id"] = request_id
    if _direct is not None:
        _direct_record(_direct, metadata(), started_ns, attributes)
        return
    tracer.start_span(
        SPAN_NAME,
        context=parent_context(metadata()),
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
        start_time=started_ns,
    ).end()


@functools.lru_cache(maxsize=4096)
def _decision_attributes(
    context: str,
    model_id: str,
    provider: str,
    reason: str,
    experiment_id: str,
    variant_id: str,
    config_revision: int,
    fallback_cause: str | None,
    fallback_from: str,
) -> dict[str, str | int]:
    """The attributes every decision with this outcome shares (a few per context and
    config revision): built once, copied into each span. Callers must not mutate it."""
    attributes: dict[str, str | int] = {
        "modelroute.context": context,
        "modelroute.model_id": model_id,
        "modelroute.provider": provider,
        "modelroute.reason": reason,
        "modelroute.experiment_id": experiment_id,
        "modelroute.variant_id": variant_id,
        "modelroute.config_revision": config_revision,
    }
    # The decision as an OpenFeature evaluation (flag key = context).
    attributes.update(
        feature_flag_attributes(context, model_id, reason, variant_id, config_revision)
    )
    if fallback_cause is not None:
        attributes["modelroute.fallback_cause"] = fallback_cause
        attributes["modelroute.fallback_from"] = fallback_from
    return attributes


def _direct_record(
    sink: Callable[[SpanRecord], None],
    metadata: Sequence[tuple[str, str | bytes]] | None,
    started_ns: int,
    attributes: dict[str, str | int],
) -> None:
    """What the SDK would produce with the default parent-based always-on sampler and
    random ids, handed straight to the exporter's queue."""
    parent_id, flags, state = 0, 1, ""
    parent = parent_context(metadata)
    if parent is not None:
        span_context = trace.get_current_span(parent).get_span_context()
        if span_context.is_valid:
            if not span_context.trace_flags.sampled:
                return  # the caller's trace is not sampled: neither is this span
            trace_id, parent_id, flags = span_context.trace_id, span_context.span_id, 1
            state = span_context.trace_state.to_header() if span_context.trace_state else ""
    if not parent_id:
        trace_id = _random_id(128)
    sink(
        (
            SPAN_NAME,
            trace_id,
            _random_id(64),
            parent_id,
            bool(parent_id),
            flags,
            state,
            started_ns,
            time.time_ns(),
            _SERVER_KIND,
            _UNSET,
            None,
            attributes,
            (),
            _SCOPE,
        )
    )


def _random_id(bits: int) -> int:
    value = random.getrandbits(bits)
    while not value:  # zero is the invalid id
        value = random.getrandbits(bits)
    return value


def use_direct_export(sink: Callable[[SpanRecord], None] | None, *, skip: bool = False) -> None:
    """`sink`: decision spans go straight to it (the tracer provider exports only through
    it and samples parent-based always-on). `skip`: nothing consumes spans, build none."""
    global _direct, _skip
    _direct, _skip = sink, skip


def record_failure(
    metadata: Sequence[tuple[str, str | bytes]] | None,
    started_ns: int,
    context: str,
    error_reason: str,
    message: str,
) -> None:
    """The span of a resolve that was refused or failed: the context and why."""
    span = tracer.start_span(
        SPAN_NAME,
        context=parent_context(metadata),
        kind=trace.SpanKind.SERVER,
        attributes={"modelroute.context": context[:128], "modelroute.error": error_reason},
        start_time=started_ns,
    )
    span.set_status(Status(StatusCode.ERROR, message))
    span.end()
