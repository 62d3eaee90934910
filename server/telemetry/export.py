"""Span export off the serving process: a span processor that hands finished spans to an
exporter child process (`export_worker`), which encodes them as OTLP and sends them.

Why: the SDK's BatchSpanProcessor encodes spans to OTLP protobuf in a thread of the serving
process. That is ~10x the cost of creating the span, in Python, under the GIL: a batch of 512
spans holds the interpreter for several switch intervals and the event loop answers nothing
meanwhile (p99 at a modest 1,000 req/s went from 4 ms to 13 ms). Here `on_end` only appends
the span to a queue; a thread turns at most `slice_size` spans at a time into plain tuples,
pickles them (C code) and writes them to the child's stdin (a blocking write that releases
the GIL), so the serving loop waits at most one short slice for the interpreter.

Nothing is lost silently: the queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, default 20,000); a
span that finds it full, or that the child reports it could not export, is counted in
`dropped`, logged once per `log_interval`, exposed as the `modelroute_spans_dropped_total`
metric and in `modelroute config status`. A dead child is restarted; a batch that could not be
written to it is counted as dropped, but spans the child had already read and not yet exported
die with it uncounted (the one gap: a crash of the exporter process itself).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

log = logging.getLogger("modelroute.telemetry")
FRAME_HEADER: Final = struct.Struct(">I")
# Frame kinds (first element of each pickled tuple) understood by export_worker.
SPANS: Final = "spans"
FLUSH: Final = "flush"
DEFAULT_MAX_QUEUE: Final = 20_000
DEFAULT_DELAY_MS: Final = 200
SLICE_SIZE: Final = 64

# A span as sent to the child: name, trace id, span id, parent span id (0: root),
# parent is remote, trace flags, trace state (w3c string), start ns, end ns, kind,
# status code, status description, attributes, events ((name, ns, attributes), ...),
# instrumentation scope (name, version).
SpanRecord = tuple[
    str,
    int,
    int,
    int,
    bool,
    int,
    str,
    int,
    int,
    int,
    int,
    str | None,
    dict[str, Any],
    tuple[tuple[str, int, dict[str, Any]], ...],
    tuple[str, str | None],
]


def span_record(span: ReadableSpan) -> SpanRecord:
    context = span.get_span_context()
    parent = span.parent
    scope = span.instrumentation_scope
    assert context is not None
    return (
        span.name,
        context.trace_id,
        context.span_id,
        parent.span_id if parent is not None else 0,
        bool(parent is not None and parent.is_remote),
        int(context.trace_flags),
        context.trace_state.to_header() if context.trace_state else "",
        span.start_time or 0,
        span.end_time or 0,
        span.kind.value,
        span.status.status_code.value,
        span.status.description,
        dict(span.attributes or {}),
        tuple((e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
        (scope.name, scope.version) if scope is not None else ("", None),
    )


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        log.warning("%s=%r is not a number; using %d", name, env.get(name), default)
        return default


class OffloadingSpanProcessor(SpanProcessor):
    """Queues finished spans for the exporter child process; see the module docstring."""

    def __init__(
        self,
        resource_attributes: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        log_interval: float = 10.0,
    ) -> None:
        env = os.environ if env is None else env
        self._resource = dict(resource_attributes)
        self._env = dict(env)  # the child's exporter reads the OTEL_* variables
        self._max_queue = _env_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)
        self._delay = _env_int(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY_MS) / 1000
        self._log_interval = log_interval
        self._queue: collections.deque[ReadableSpan | SpanRecord] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._dropped_full = 0  # written by on_end's callers (serving threads)
        self._dropped_other = 0  # written by the export thread / child reader only
        self._drop_lock = threading.Lock()
        self._flushed = threading.Condition()
        self._flush_acks = 0
        self._write_lock = threading.Lock()
        # Held from taking spans off the queue until they are written: a flush marker must
        # not overtake a slice another thread has taken but not yet written.
        self._drain_lock = threading.RLock()
        self._child: subprocess.Popen[bytes] | None = None
        self._start_child()
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    # --- what the SDK calls (serving threads) ---------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.offer(span)

    def offer(self, span: ReadableSpan | SpanRecord) -> None:
        """Queue an SDK span, or a record already in the child's format (decision spans)."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._stopping:
            with self._drop_lock:
                self._dropped_full += 1
            return
        queue.append(span)  # deque.append is atomic: no lock on the hot path
        if len(queue) == SLICE_SIZE * 4:
            self._wake.set()

    @property
    def dropped(self) -> int:
        """Spans that will never reach the collector (queue full, export failed)."""
        return self._dropped_full + self._dropped_other

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Everything queued so far handed to the child and exported (or counted dropped)."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._flushed:
            target = self._flush_acks + 1
        with self._drain_lock:
            self._send_queued()
            if not self._send((FLUSH,)):
                return False
        with self._flushed:
            while self._flush_acks < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._flushed.wait(left):
                    return False
        return True

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(30)
        self._send_queued()
        child = self._child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.close()  # the child exports what it has, then exits
                child.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                log.error("span exporter did not finish within 30 s; killing it")
                child.kill()

    # --- the export thread ----------------------------------------------------------------

    def _run(self) -> None:
        reported = 0
        next_report = time.monotonic() + self._log_interval
        while not self._stopping:
            self._wake.wait(max(0.0, min(self._delay, next_report - time.monotonic())))
            self._wake.clear()
            self._send_queued()
            if time.monotonic() >= next_report:
                dropped = self.dropped
                if dropped > reported:
                    log.warning(
                        "%d spans dropped in the last %.0f s (export queue full or export"
                        " failed; %d since start)",
                        dropped - reported,
                        self._log_interval,
                        dropped,
                    )
                    reported = dropped
                next_report = time.monotonic() + self._log_interval

    def _send_queued(self) -> None:
        """Bounded slices: convert a few spans, then a write that releases the GIL."""
        queue = self._queue
        while queue:
            with self._drain_lock:  # per slice: a flush waits at most for one slice
                batch: list[SpanRecord] = []
                while queue and len(batch) < SLICE_SIZE:
                    item = queue.popleft()
                    batch.append(item if isinstance(item, tuple) else span_record(item))
                if batch and not self._send((SPANS, batch)):
                    self._count_dropped(len(batch))

    def _send(self, message: tuple[Any, ...]) -> bool:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._write_lock:
            for attempt in range(2):
                child = self._child
                try:
                    assert child is not None and child.stdin is not None
                    child.stdin.write(FRAME_HEADER.pack(len(data)) + data)
                    child.stdin.flush()
                    return True
                except (OSError, ValueError, AssertionError) as exc:
                    if self._stopping and attempt:
                        return False
                    log.error("span exporter process gone (%s); restarting it", exc)
                    self._start_child()
        return False

    def _count_dropped(self, count: int) -> None:
        with self._drop_lock:
            self._dropped_other += count

    # --- the child ------------------------------------------------------------------------

    def _start_child(self) -> None:
        child = subprocess.Popen(
            [sys.executable, "-m", "modelroute.server.telemetry.export_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._env,
        )
        assert child.stdin is not None and child.stdout is not None
        _grow_pipe(child.stdin)
        header = pickle.dumps(("resource", self._resource), protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.write(FRAME_HEADER.pack(len(header)) + header)
        child.stdin.flush()
        self._child = child
        reader = threading.Thread(
            target=self._read_child, args=(child.stdout,), name="span-export-acks", daemon=True
        )
        reader.start()

    def _read_child(self, stdout: IO[bytes]) -> None:
        """The child's replies: `failed N` (spans it could not export), `flushed`."""
        for line in stdout:
            words = line.split()
            if words[:1] == [b"failed"] and len(words) == 2:
                self._count_dropped(int(words[1]))
            elif words == [b"flushed"]:
                with self._flushed:
                    self._flush_acks += 1
                    self._flushed.notify_all()


def _grow_pipe(stream: IO[bytes]) -> None:
    """A 1 MiB pipe (Linux): the export thread blocks less often on a busy child."""
    fcntl_setpipe_sz = 1031
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl_setpipe_sz, 1 << 20)
    except (ImportError, OSError):
        pass


def records_to_spans(
    records: Sequence[SpanRecord], resource: Any, scopes: dict[tuple[str, str | None], Any]
) -> list[ReadableSpan]:
    """SDK spans rebuilt from records: what the child exported before it encoded records
    directly (`otlp_records`); the reference that encoding is tested and measured against."""
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.span import TraceState

    spans = []
    for (
        name,
        trace_id,
        span_id,
        parent_id,
        parent_remote,
        flags,
        state,
        start,
        end,
        kind,
        status_code,
        status_description,
        attributes,
        events,
        scope_key,
    ) in records:
        trace_state = TraceState.from_header([state]) if state else None
        context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
        parent = (
            SpanContext(trace_id, parent_id, parent_remote, TraceFlags(flags), trace_state)
            if parent_id
            else None
        )
        scope = scopes.get(scope_key)
        if scope is None:
            scope = scopes[scope_key] = InstrumentationScope(*scope_key)
        spans.append(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=attributes,
                events=[Event(n, a, t) for n, t, a in events],
                kind=SpanKind(kind),
                status=Status(StatusCode(status_code), status_description),
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
        )
    return spans
