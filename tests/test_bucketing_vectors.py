"""The published bucketing vectors (tests/vectors/bucketing.json) hold for the server's
resolver: the same file is checked by the TypeScript, Go and Python SDK clients."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from modelroute.server.core.resolver import assign_variant, bucket_of
from modelroute.server.core.snapshot import SnapshotBuilder

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bucketing.json").read_text())


@pytest.mark.parametrize(
    "case", VECTORS["cases"], ids=lambda c: f"{c['experiment_id']}/{c['unit_id'][:12]}"
)
def test_vector(case: dict[str, Any]) -> None:
    models = {f"models/m{i}": {"provider": "p"} for i in range(len(case["weights"]))}
    experiment = {
        "context": "c",
        "enabled": True,
        "variants": [
            {"id": f"v{i}", "model": f"m{i}", "weight": w} for i, w in enumerate(case["weights"])
        ],
    }
    values = models | {
        "contexts/c": {"model": "m0"},
        f"experiments/{case['experiment_id']}": experiment,
    }
    snapshot, rejections = SnapshotBuilder(env_overrides={}).apply(
        1, {k: json.dumps(v).encode() for k, v in values.items()}, datetime.now(UTC)
    )
    assert not rejections
    spec = snapshot.experiments[case["experiment_id"]]
    assert bucket_of(case["experiment_id"], case["unit_id"]) == case["bucket"]
    assert assign_variant(spec, case["unit_id"]) == case["variant_index"]


def test_vectors_cover_every_variant_position() -> None:
    """The file would not catch an off-by-one at a boundary if it never hit later variants."""
    hits = {(len(c["weights"]), c["variant_index"]) for c in VECTORS["cases"]}
    assert {(2, 0), (2, 1), (3, 2), (4, 3)} <= hits
