"""What a summary returns, and how rollup (or raw) rows fold into it: usage totals, outcome
counts and latency percentiles per group (`UsageAccumulator` -> `UsageGroup`), and feedback
statistics (`FeedbackGroup`).

Rows may come with a negative sign (a window end served by subtraction, see
`rollup_window`): counts and histogram buckets then net out exactly, and `prune` drops what
nets to nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from .rollups import bucket_value

PERCENTILES: Final = (50, 95, 99)


@dataclass
class UsageGroup:
    """Usage totals, outcome counts and latency percentiles of one group."""

    key: str
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_mean_ms: float = 0.0
    latency_var_ms2: float = 0.0  # population variance
    percentiles: dict[int, float] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    units: int = 0  # distinct users (experiments bucketed by user) or calls


@dataclass
class FeedbackGroup:
    """Feedback counts and quality-score statistics of one experiment variant."""

    key: str
    scores: int = 0
    score_mean: float = 0.0
    score_var: float = 0.0  # population variance
    thumbs: int = 0
    thumbs_up: int = 0
    feedbacks: int = 0


class UsageAccumulator:
    """Folds rollup (or raw) rows of one group into a UsageGroup."""

    def __init__(self, key: str) -> None:
        self.group = UsageGroup(key)
        self.buckets: dict[int, int] = {}
        self.latency_sum = 0
        self.latency_sq_sum = 0.0
        self.cost_sq_sum = 0.0  # for the cost variance (rollout guardrails)

    def add(
        self,
        outcome: str,
        calls: Any,
        tokens_in: Any,
        tokens_out: Any,
        cost: Any,
        latency_sum: Any,
        latency_sq_sum: Any,
        cost_sq_sum: Any = 0.0,
    ) -> None:
        """Add one (group, outcome) aggregate row to the group's totals."""
        group, calls = self.group, int(calls)
        group.calls += calls
        if outcome != "OK":
            group.errors += calls
        group.by_outcome[outcome] = group.by_outcome.get(outcome, 0) + calls
        group.input_tokens += int(tokens_in or 0)
        group.output_tokens += int(tokens_out or 0)
        group.cost_usd += float(cost or 0.0)
        self.latency_sum += int(latency_sum or 0)
        self.latency_sq_sum += float(latency_sq_sum or 0.0)
        self.cost_sq_sum += float(cost_sq_sum or 0.0)

    def add_bucket(self, bucket: int, calls: Any) -> None:
        """Add the calls of one latency bucket (for percentiles)."""
        self.buckets[bucket] = self.buckets.get(bucket, 0) + int(calls)

    def prune(self) -> bool:
        """Drop outcomes and latency buckets that net to zero (rows added, then subtracted
        by a window end); False if the whole group does (no calls in the window).
        """
        by_outcome = self.group.by_outcome
        for outcome in [o for o, n in by_outcome.items() if n == 0]:
            del by_outcome[outcome]
        for bucket in [b for b, n in self.buckets.items() if n == 0]:
            del self.buckets[bucket]
        return self.group.calls != 0

    def finish(self, units: int | None) -> UsageGroup:
        """The group's totals, with latency percentiles and `units` distinct units."""
        group, n = self.group, self.group.calls
        if n:
            group.latency_mean_ms = self.latency_sum / n
            group.latency_var_ms2 = max(0.0, self.latency_sq_sum / n - group.latency_mean_ms**2)
            ordered = sorted(self.buckets.items())
            for q in PERCENTILES:
                rank, seen = math.ceil(q * n / 100), 0  # nearest rank
                for bucket, count in ordered:
                    seen += count
                    if seen >= rank:
                        group.percentiles[q] = bucket_value(bucket)
                        break
        group.units = n if units is None else units
        return group
