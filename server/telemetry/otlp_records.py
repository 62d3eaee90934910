"""OTLP encoding of span records (`export.SpanRecord`) without rebuilding SDK spans.

The exporter child used to turn each record back into an SDK `ReadableSpan` and let the
standard encoder build the protobuf message field by field: ~65 µs of Python per span, the
child's whole cost. A decision span repeats most of its ~17 attributes from one span to the
next (context, model, provider, reason, tier, ...), so here each attribute is serialised once
and the bytes are reused: a span is its ids and times packed with `struct` plus cached
attribute fragments, joined; the request is parsed once from the joined bytes (C code), so
what goes on the wire is what protobuf serialises for an equal message.

The result equals `encode_spans(records_to_spans(records, ...))` (tests/test_otlp_records.py
compares them for varied records). Anything but str/bool/int/float attribute values (lists,
bytes, mappings, None, out-of-range ints) and events go through the standard encoder's own
functions, so rare shapes are exactly as before too.

`RecordSpanExporter` is the standard `OTLPSpanExporter` fed records instead of SDK spans: its
retries, timeouts, headers, TLS, compression and `OTEL_*` configuration are the library's.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import StatusCode
from opentelemetry.trace.span import TraceState

from .export import SpanRecord

log = logging.getLogger("modelroute.telemetry.export_worker")

# Field tags (field number << 3 | wire type) of opentelemetry/proto/trace/v1/trace.proto.
_TRACE_ID: Final = b"\x0a\x10"  # 1, 16 bytes
_SPAN_ID: Final = b"\x12\x08"  # 2, 8 bytes
_TRACE_STATE: Final = b"\x1a"  # 3
_PARENT_SPAN_ID: Final = b"\x22\x08"  # 4, 8 bytes
_NAME: Final = b"\x2a"  # 5
_KIND: Final = b"\x30"  # 6, varint
_TIMES: Final = struct.Struct("<BQBQ")  # 7 and 8, fixed64 start and end
_START_TAG: Final = 0x39
_END_TAG: Final = 0x41
_ATTRIBUTE: Final = b"\x4a"  # 9: KeyValue{1: key, 2: AnyValue}
_STATUS: Final = b"\x7a"  # 15: Status{2: message, 3: code}
_FLAGS: Final = struct.Struct("<2sI")  # 16, fixed32
_FLAGS_TAG: Final = b"\x85\x01"
_SPANS: Final = b"\x12"  # ScopeSpans.spans = 2
_SCOPE_SPANS: Final = b"\x12"  # ResourceSpans.scope_spans = 2
_RESOURCE_SPANS: Final = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_DOUBLE: Final = struct.Struct("<d")
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
DEFAULT_CACHE_LIMIT: Final = 16_384  # fragments of ~100 bytes: a few MiB at most


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    """A proto3 string field: absent when empty."""
    return _delimited(tag, text.encode()) if text else b""


class RecordEncoder:
    """Builds one `ExportTraceServiceRequest` per batch of records, all of one resource.

    Attribute fragments are cached across batches (bounded: cleared when `cache_limit`
    entries are reached, so unique values such as request ids cannot grow it without end).
    """

    def __init__(self, resource: Resource, *, cache_limit: int = DEFAULT_CACHE_LIMIT) -> None:
        self._resource_header = ResourceSpans(
            resource=_encode_resource(resource), schema_url=resource.schema_url
        ).SerializeToString()
        self._cache_limit = cache_limit
        self._strings: dict[str, dict[str, bytes]] = {}  # key -> str value -> fragment
        self._others: dict[tuple[str, type, object], bytes] = {}  # int and bool values
        self._cached = 0
        self._keys: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._trace_states: dict[str, bytes] = {}
        self._scope_headers: dict[tuple[str, str | None], bytes] = {}

    def encode(self, records: Sequence[SpanRecord]) -> ExportTraceServiceRequest:
        by_scope: dict[tuple[str, str | None], list[bytes]] = {}
        for record in records:
            scope_spans = by_scope.get(record[14])
            if scope_spans is None:
                scope_spans = by_scope[record[14]] = []
            span = self._span(record)
            size = len(span)
            if 0x80 <= size < 0x4000:  # the usual span: a two-byte length
                scope_spans.append(b"".join((_SPANS, bytes((size & 0x7F | 0x80, size >> 7)), span)))
            else:
                scope_spans.append(_SPANS + _varint(size) + span)
        if not by_scope:
            return ExportTraceServiceRequest()
        parts = [self._resource_header]
        for scope_key, spans in by_scope.items():
            parts.append(_delimited(_SCOPE_SPANS, self._scope_header(scope_key) + b"".join(spans)))
        request = _delimited(_RESOURCE_SPANS, b"".join(parts))
        if self._cached >= self._cache_limit:
            self._strings.clear()
            self._others.clear()
            self._cached = 0
        return ExportTraceServiceRequest.FromString(request)

    def _span(self, record: SpanRecord) -> bytes:
        (
            name,
            trace_id,
            span_id,
            parent_id,
            parent_remote,
            _trace_flags,  # not an OTLP span field; the SDK encoder does not send it either
            state,
            start,
            end,
            kind,
            status_code,
            status_description,
            attributes,
            events,
            _scope,
        ) = record
        name_field = self._names.get(name)
        if name_field is None:
            name_field = self._names[name] = _text(_NAME, name)
        parts = [
            _TRACE_ID,
            trace_id.to_bytes(16, "big"),
            _SPAN_ID,
            span_id.to_bytes(8, "big"),
            name_field,
            _KINDS[kind] if 0 <= kind < len(_KINDS) else _KIND + _varint(kind + 1),
            _TIMES.pack(_START_TAG, start, _END_TAG, end),
        ]
        if state:
            parts.append(self._trace_state(state))
        if parent_id:
            parts += (_PARENT_SPAN_ID, parent_id.to_bytes(8, "big"))
        strings, others = self._strings, self._others
        for key, value in attributes.items():
            kind_of_value = value.__class__
            if kind_of_value is str:  # most values: one dict per key, no tuple to build
                values = strings.get(key)
                if values is None:
                    values = strings[key] = {}
                fragment = values.get(value)
                if fragment is None:
                    fragment = values[value] = self._attribute(key, value)
                    self._cached += 1
            elif kind_of_value is int or kind_of_value is bool:  # True == 1: type in the key
                fragment = others.get((key, kind_of_value, value))
                if fragment is None:
                    fragment = others[(key, kind_of_value, value)] = self._attribute(key, value)
                    self._cached += 1
            else:
                fragment = self._attribute(key, value)
            parts.append(fragment)
        if events:
            parts.append(_events(events))
        if status_code or status_description:
            parts.append(_status(status_code, status_description))
        else:
            parts.append(_UNSET_STATUS)
        parts.append(_REMOTE_PARENT if parent_id and parent_remote else _LOCAL_OR_NO_PARENT)
        return b"".join(parts)

    def _attribute(self, key: str, value: Any) -> bytes:
        """The span's `attributes` entry for one key, as the SDK encoder would write it."""
        try:
            return self._scalar_attribute(key, value)
        except UnicodeEncodeError:  # lone surrogates: what protobuf refuses, logged and left out
            return _library_attribute(key, value)

    def _scalar_attribute(self, key: str, value: Any) -> bytes:
        kind_of_value = value.__class__
        if kind_of_value is str:
            any_value = _delimited(b"\x0a", value.encode())  # string_value = 1 (a oneof:
        elif kind_of_value is bool:  # present even when empty, false or zero)
            any_value = b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
        elif kind_of_value is int and _INT64_MIN <= value <= _INT64_MAX:
            any_value = b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int_value = 3
        elif kind_of_value is float:
            any_value = b"\x21" + _DOUBLE.pack(value)  # double_value = 4
        else:  # sequences, bytes, mappings, None, subclasses, out-of-range ints
            return _library_attribute(key, value)
        key_field = self._keys.get(key)
        if key_field is None:
            key_field = self._keys[key] = _text(b"\x0a", key)
        return _delimited(_ATTRIBUTE, key_field + _delimited(b"\x12", any_value))

    def _trace_state(self, state: str) -> bytes:
        field = self._trace_states.get(state)
        if field is None:
            # As the SDK span would carry it: parsed (invalid entries dropped), re-joined.
            parsed = TraceState.from_header([state])
            joined = ",".join(f"{key}={value}" for key, value in parsed.items())
            field = self._trace_states[state] = _text(_TRACE_STATE, joined)
        return field

    def _scope_header(self, scope_key: tuple[str, str | None]) -> bytes:
        header = self._scope_headers.get(scope_key)
        if header is None:
            scope = InstrumentationScope(*scope_key)
            header = self._scope_headers[scope_key] = ScopeSpans(
                scope=_encode_instrumentation_scope(scope), schema_url=scope.schema_url or ""
            ).SerializeToString()
        return header


def _library_attribute(key: str, value: Any) -> bytes:
    try:
        return PbSpan(attributes=[_encode_key_value(key, value)]).SerializeToString()
    except Exception as error:  # what the SDK encoder does: log, leave the attribute out
        log.exception("Failed to encode key %s: %s", key, error)
        return b""


def _events(events: tuple[tuple[str, int, dict[str, Any]], ...]) -> bytes:
    return PbSpan(
        events=[
            PbSpan.Event(name=name, time_unix_nano=timestamp, attributes=_encode_attributes(attrs))
            for name, timestamp, attrs in events
        ]
    ).SerializeToString()


def _status(code: int, description: str | None) -> bytes:
    """Always present (the SDK encoder sets it even when unset); the description only with
    ERROR, as `opentelemetry.trace.Status` keeps it."""
    payload = b""
    if description and isinstance(description, str) and code == StatusCode.ERROR.value:
        payload = _delimited(b"\x12", description.encode())
    if code:
        payload += b"\x18" + _varint(code)
    return _STATUS + _varint(len(payload)) + payload


# SDK SpanKind INTERNAL=0..CONSUMER=4 -> OTLP SPAN_KIND_INTERNAL=1..SPAN_KIND_CONSUMER=5.
_KINDS: Final = tuple(_KIND + _varint(kind + 1) for kind in range(5))
_UNSET_STATUS: Final = _status(0, None)
# The span's `flags` as the SDK encoder sets them: whether the parent is remote is known.
_LOCAL_OR_NO_PARENT: Final = _FLAGS.pack(_FLAGS_TAG, _HAS_IS_REMOTE)
_REMOTE_PARENT: Final = _FLAGS.pack(_FLAGS_TAG, _HAS_IS_REMOTE | _IS_REMOTE)


class RecordSpanExporter(OTLPSpanExporter):
    """The standard OTLP/gRPC span exporter, taking span records (`export_records`)."""

    def __init__(self, resource: Resource, **options: Any) -> None:
        super().__init__(**options)
        self._encoder = RecordEncoder(resource)

    def export_records(self, records: Sequence[SpanRecord]) -> SpanExportResult:
        result: SpanExportResult = self._export(records)  # type: ignore[arg-type]
        return result

    def _translate_data(self, data: Sequence[Any]) -> ExportTraceServiceRequest:
        if data and isinstance(data[0], ReadableSpan):  # `export` with SDK spans still works
            return super()._translate_data(data)
        return self._encoder.encode(data)
