"""The span exporter child process (see `export.py`): reads pickled span batches from stdin,
exports them with the standard OTLP/gRPC exporter (configured by the usual `OTEL_*`
variables; `otlp_records` encodes the records straight to OTLP), and reports on stdout:
`failed N` for spans that could not be exported, `flushed` once everything received before
a flush request is exported.

Runs until stdin closes, then exports what it still holds and exits.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading
from typing import IO, Any

from .export import FLUSH, FRAME_HEADER, SPANS, SpanRecord

MAX_EXPORT_BATCH = 512
EXPORTER_NICENESS = 10
log = logging.getLogger("modelroute.telemetry.export_worker")


def read_frames(stream: IO[bytes], into: queue.Queue[tuple[Any, ...] | None]) -> None:
    while True:
        header = stream.read(FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            break
        (length,) = FRAME_HEADER.unpack(header)
        into.put(pickle.loads(stream.read(length)))
    into.put(None)


def reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Export is background work: when the cores are busy, answering calls comes first.
    os.nice(EXPORTER_NICENESS)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExportResult

    from .otlp_records import RecordSpanExporter

    frames: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=256)
    threading.Thread(target=read_frames, args=(sys.stdin.buffer, frames), daemon=True).start()
    first = frames.get()
    if first is None:
        return
    exporter = RecordSpanExporter(Resource.create(first[1]))
    pending: list[SpanRecord] = []
    done = False

    def export() -> None:
        while pending:
            batch = pending[:MAX_EXPORT_BATCH]
            del pending[:MAX_EXPORT_BATCH]
            if exporter.export_records(batch) is not SpanExportResult.SUCCESS:
                reply(f"failed {len(batch)}")

    while not done:
        message = frames.get()
        # Take whatever else is already there: fewer, larger export calls.
        while True:
            if message is None:
                done = True
            elif message[0] == SPANS:
                pending.extend(message[1])
            elif message[0] == FLUSH:
                export()
                reply("flushed")
            if done or len(pending) >= MAX_EXPORT_BATCH:
                break
            try:
                message = frames.get_nowait()
            except queue.Empty:
                break
        export()
    exporter.shutdown()


if __name__ == "__main__":
    main()
