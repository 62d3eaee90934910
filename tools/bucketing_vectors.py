"""Write tests/vectors/bucketing.json: experiment id, unit (user) id, weights → bucket and
variant, from the server's own implementation. Clients in every language check themselves
against this file (Python: tests/test_bucketing_vectors.py). Run: `make vectors`."""

from __future__ import annotations

import json
import random
from pathlib import Path

from modelroute.server.core.resolver import BUCKETS, bucket_of

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "bucketing.json"
WEIGHT_SETS = [[50, 50], [70, 30], [90, 10], [34, 33, 33], [100], [0, 100], [25, 25, 25, 25]]
UNITS = ["user-42", "42", "", "ünïcødé-用户", "a/b", "x" * 200]


def variant_for(bucket: int, weights: list[int]) -> int:
    upper = 0
    for index, weight in enumerate(weights):
        upper += weight * BUCKETS // 100
        if bucket < upper:
            return index
    return len(weights) - 1


def build() -> dict[str, object]:
    rng = random.Random(20261125)
    units = UNITS + [f"user-{rng.randrange(10**9)}" for _ in range(60)]
    cases = []
    for n, unit in enumerate(units):
        experiment = f"exp-{n % 5}" if n % 3 else "rag-answer-2026q4"
        weights = WEIGHT_SETS[n % len(WEIGHT_SETS)]
        bucket = bucket_of(experiment, unit)
        cases.append(
            {
                "experiment_id": experiment,
                "unit_id": unit,
                "weights": weights,
                "bucket": bucket,
                "variant_index": variant_for(bucket, weights),
            }
        )
    return {
        "algorithm": (
            "bucket = murmur3_x86_32(utf8(experiment_id + '/' + unit_id), seed=0) as unsigned"
            " % 10000; variant = first i with bucket < sum(weights[0..i]) * 100"
        ),
        "buckets": BUCKETS,
        "cases": cases,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
