"""CPU per span in the exporter child: the standard SDK encoder on rebuilt SDK spans (what the
child did before, `encode_spans(records_to_spans(...))`) against the direct encoding
(`otlp_records.RecordEncoder`), on the same decision-span records.

The records are made by `decision_spans.record_decision` itself (direct export, as the server
runs), ~17 attributes each, varied like traffic: 20 contexts, 5 models, 4 providers, 2,000
users, a unique request id, some fallbacks, 1 in 10 with a caller's `traceparent`. They go
through pickle in slices of 64 as the serving process sends them, then each side encodes
them in export batches of 512 and serialises each request (as gRPC does before sending).
Rounds alternate the two sides; each direct round starts with an empty attribute cache (the
child's cache is warm in a long run: this is the conservative figure). Process CPU time.

Run: `.venv/bin/python bench/span_encoding.py` (`--spans 20000 --rounds 5`).
"""

from __future__ import annotations

import argparse
import enum
import functools
import pickle
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelroute.server.telemetry import decision_spans
from modelroute.server.telemetry.export import SLICE_SIZE, SpanRecord, records_to_spans
from modelroute.server.telemetry.otlp_records import RecordEncoder
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

EXPORT_BATCH = 512  # export_worker.MAX_EXPORT_BATCH


class Reason(enum.Enum):
    RULE = 1
    EXPERIMENT = 2
    DEFAULT = 3
    FALLBACK = 4


class Cause(enum.Enum):
    COOLDOWN = 1
    QUOTA = 2


@dataclass(frozen=True)
class Decision:
    model_id: str
    provider: str
    reason: Reason
    experiment_id: str
    variant_id: str
    config_revision: int
    fallback_cause: Cause | None
    fallback_from: str


def decision_records(count: int, seed: int = 14) -> list[SpanRecord]:
    rng = random.Random(seed)
    contexts = [f"support.chat.{i}" for i in range(20)]
    models = [("gpt-4o", "openai"), ("claude-sonnet-4", "anthropic"), ("llama-3.3-70b", "meta")]
    models += [("mistral-large", "mistral"), ("gpt-4o-mini", "openai")]
    users = [f"user-{i}" for i in range(2_000)]
    records: list[SpanRecord] = []
    decision_spans.use_direct_export(records.append)
    try:
        for _ in range(count):
            model, provider = rng.choice(models)
            fallback = rng.random() < 0.05
            in_experiment = rng.random() < 0.3
            decision = Decision(
                model,
                provider,
                Reason.FALLBACK if fallback else rng.choice(list(Reason)[:3]),
                "exp-latency" if in_experiment else "",
                rng.choice(["control", "candidate"]) if in_experiment else "",
                rng.randint(40, 42),
                Cause.COOLDOWN if fallback else None,
                "gpt-4o" if fallback else "",
            )
            metadata = None
            if rng.random() < 0.1:
                trace, parent = rng.getrandbits(128), rng.getrandbits(64) or 1
                metadata = [("traceparent", f"00-{trace:032x}-{parent:016x}-01")]
            decision_spans.record_decision(
                functools.partial(tuple, metadata or ()),  # read lazily, as the server does
                time.time_ns(),
                rng.choice(contexts),
                rng.choice(users),
                rng.choice(["free", "pro", "enterprise"]),
                str(uuid.UUID(int=rng.getrandbits(128))),
                decision,
            )
    finally:
        decision_spans.use_direct_export(None)
    # As the child receives them: pickled slices (each its own string objects).
    received: list[SpanRecord] = []
    for start in range(0, len(records), SLICE_SIZE):
        received += pickle.loads(pickle.dumps(records[start : start + SLICE_SIZE], protocol=5))
    return received


def timed(
    encode: Callable[[Sequence[SpanRecord]], ExportTraceServiceRequest],
    records: Sequence[SpanRecord],
) -> float:
    """CPU seconds to encode and serialise all records in export batches."""
    started = time.process_time()
    for start in range(0, len(records), EXPORT_BATCH):
        encode(records[start : start + EXPORT_BATCH]).SerializeToString()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    resource = Resource.create({"service.name": "modelroute"})
    records = decision_records(args.spans)
    attributes = statistics.mean(len(r[12]) for r in records)
    print(f"{len(records):,} decision-span records, {attributes:.1f} attributes each on average")

    def sdk(batch: Sequence[SpanRecord]) -> ExportTraceServiceRequest:
        return encode_spans(records_to_spans(batch, resource, {}))

    check = RecordEncoder(resource)
    for start in range(0, len(records), EXPORT_BATCH):
        batch = records[start : start + EXPORT_BATCH]
        assert check.encode(batch) == sdk(batch), "the encoders disagree"
    print("requests equal to the SDK encoder's for every batch")

    sdk_times: list[float] = []
    direct_times: list[float] = []
    for round_number in range(1, args.rounds + 1):
        sdk_times.append(timed(sdk, records))
        direct_times.append(timed(RecordEncoder(resource).encode, records))
        per_span = [t / len(records) * 1e6 for t in (sdk_times[-1], direct_times[-1])]
        print(f"round {round_number}: SDK {per_span[0]:6.1f} µs/span, direct {per_span[1]:5.1f}")
    sdk_us = statistics.median(sdk_times) / len(records) * 1e6
    direct_us = statistics.median(direct_times) / len(records) * 1e6
    print(
        f"median CPU per span: SDK encoder {sdk_us:.1f} µs, direct {direct_us:.1f} µs"
        f" → direct is {sdk_us / direct_us:.1f}x cheaper ({direct_us / sdk_us:.2f} of the SDK's)"
    )


if __name__ == "__main__":
    main()
