"""The exporter child's direct OTLP encoding sends exactly what the standard SDK encoder sent
for the same spans: a collector sees no difference (ids, parents, remote bits, kinds,
status, attributes of every type, events, scopes, resource)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modelroute.server.telemetry.export import SpanRecord, records_to_spans
from modelroute.server.telemetry.otlp_records import RecordEncoder, RecordSpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.helpers import Receiver

RESOURCE = Resource.create({"service.name": "modelroute-test", "deployment.environment": "ci"})
ROUTER = ("modelroute.router", None)
OTHER = ("modelroute.usage", "1.2.3")

EVERY_TYPE: dict[str, Any] = {
    "str": "gpt-4o",
    "str.empty": "",
    "str.unicode": "modèle ✓",
    "bool.true": True,
    "bool.false": False,
    "int.zero": 0,
    "int": 42,
    "int.negative": -7,
    "int.large": 2**62,
    "int.min": -(2**63),
    "float": 1.5,
    "float.zero": 0.0,
    "float.negative": -2.25e-9,
    "seq.str": ("a", "", "c"),
    "seq.bool": (True, False),
    "seq.int": (1, -2, 3),
    "seq.float": (0.5, 2.0),
    "seq.empty": (),
    "list.str": ["x", "y"],
    "bytes": b"\x00\x01",
}


def record(
    name: str = "modelroute.resolve",
    *,
    trace_id: int = 0x0AF7651916CD43DD8448EB211C80319C,
    span_id: int = 0xB7AD6B7169203331,
    parent_id: int = 0,
    remote: bool = False,
    state: str = "",
    kind: int = 1,
    status: tuple[int, str | None] = (0, None),
    attributes: dict[str, Any] | None = None,
    events: tuple[tuple[str, int, dict[str, Any]], ...] = (),
    scope: tuple[str, str | None] = ROUTER,
) -> SpanRecord:
    start = 1_764_500_000_123_456_789
    return (
        name,
        trace_id,
        span_id,
        parent_id,
        remote,
        1,
        state,
        start,
        start + 48_211,
        kind,
        status[0],
        status[1],
        attributes if attributes is not None else {"modelroute.context": "chat"},
        events,
        scope,
    )


VARIED: list[SpanRecord] = [
    record(),  # root, SERVER
    record(parent_id=0x00F067AA0BA902B7, remote=True, state="vendor=a1,other=b2"),
    record(span_id=3, parent_id=2, remote=False, kind=0),  # local parent, INTERNAL
    record(span_id=4, kind=2, scope=OTHER, attributes=EVERY_TYPE),  # CLIENT, second scope
    record(span_id=5, kind=3, status=(2, "upstream refused: quota"), scope=OTHER),  # ERROR
    record(span_id=6, kind=4, status=(1, "ignored unless ERROR")),  # OK, CONSUMER
    record(span_id=7, status=(0, "ignored too"), state="invalid state!"),
    record(
        span_id=8,
        events=(
            ("exception", 1_764_500_000_123_500_000, {"exception.type": "ValueError"}),
            ("retry", 1_764_500_000_123_600_000, {}),
        ),
    ),
    record(name="", span_id=9, trace_id=2**128 - 1, attributes={}),
    record(span_id=10, attributes={"modelroute.context": "chat", "count": 1, "flag": True}),
]


def sdk_request(records: list[SpanRecord]) -> ExportTraceServiceRequest:
    return encode_spans(records_to_spans(records, RESOURCE, {}))


def assert_same_request(records: list[SpanRecord], encoder: RecordEncoder) -> None:
    expected = sdk_request(records)
    built = encoder.encode(records)
    assert built == expected
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


def test_varied_records_encode_as_the_sdk_encoder_does() -> None:
    assert_same_request(VARIED, RecordEncoder(RESOURCE))
    request = RecordEncoder(RESOURCE).encode(VARIED)
    # Not vacuous: the request carries both scopes and every span.
    (resource_spans,) = request.resource_spans
    assert [s.scope.name for s in resource_spans.scope_spans] == [ROUTER[0], OTHER[0]]
    assert sum(len(s.spans) for s in resource_spans.scope_spans) == len(VARIED)


def test_cached_attributes_stay_exact_across_batches_and_cache_resets() -> None:
    encoder = RecordEncoder(RESOURCE, cache_limit=8)
    for batch in range(3):
        records = [
            record(
                span_id=batch * 100 + index + 1,
                attributes={
                    "modelroute.context": f"ctx-{index % 3}",
                    "modelroute.config_revision": index % 2,
                    # True/1 and False/0 are equal dict keys: they must not share a fragment.
                    "flag": (True, 1, False, 0)[index % 4],
                    "modelroute.request_id": f"req-{batch}-{index}",
                },
            )
            for index in range(12)
        ]
        assert_same_request(records, encoder)


def test_values_the_sdk_encoder_drops_are_dropped_alike(caplog: pytest.LogCaptureFixture) -> None:
    records = [
        record(
            attributes={
                "ok": "kept",
                "too.big": 2**64,
                "lone.surrogate": "\ud800",
                "bad.key.\udc00": "x",
                "after": 1,
            }
        )
    ]
    assert_same_request(records, RecordEncoder(RESOURCE))
    assert "too.big" in caplog.text


def test_no_records_make_an_empty_request() -> None:
    assert RecordEncoder(RESOURCE).encode([]) == sdk_request([])


async def test_the_exporter_sends_records_and_sdk_spans_alike_to_a_collector(
    receiver: tuple[Receiver, int],
) -> None:
    collector, port = receiver
    exporter = RecordSpanExporter(RESOURCE, endpoint=f"127.0.0.1:{port}", insecure=True)
    try:
        sent = await asyncio.to_thread(exporter.export_records, VARIED)
        assert sent is SpanExportResult.SUCCESS
        spans = records_to_spans(VARIED, RESOURCE, {})
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    expected = [
        s for r in sdk_request(VARIED).resource_spans for ss in r.scope_spans for s in ss.spans
    ]
    assert collector.spans == expected + expected
