"""Always-valid results of an experiment variant against the control (GetExperimentResults).

Beside the fixed-horizon p-values (valid for one look at a planned sample size), each
variant gets mSPRT p-values and 95% confidence sequences (`sequential.py`) for the same
four differences, so operators can look every day without inflating false positives; the
`significant_sequential` flag (Bonferroni over the metrics compared, like `significant`)
is the one the dashboard shows.
"""

from __future__ import annotations

import math
from typing import Final

from modelroute.admin.v1 import admin_pb2
from modelroute.storage.usage_groups import FeedbackGroup, UsageGroup

from .sequential import Moments, SequentialResult, compare

ALPHA: Final = 0.05
UNBOUNDED: Final = 1e308  # ±infinity as a JSON-safe number


def _sample(n: int, mean: float, population_variance: float) -> Moments:
    variance = population_variance * n / (n - 1) if n > 1 else 0.0
    return Moments(n, mean, variance)


def _bounded(value: float) -> float:
    return value if math.isfinite(value) else math.copysign(UNBOUNDED, value)


def add_sequential_results(
    result: admin_pb2.VariantResult,
    usage: UsageGroup,
    control: UsageGroup,
    feedback: FeedbackGroup,
    control_feedback: FeedbackGroup,
) -> None:
    """Fill the always-valid fields of a non-control variant's result."""
    error = compare(
        Moments.proportion(usage.calls, usage.errors),
        Moments.proportion(control.calls, control.errors),
    )
    latency = compare(
        _sample(usage.calls, usage.latency_mean_ms, usage.latency_var_ms2),
        _sample(control.calls, control.latency_mean_ms, control.latency_var_ms2),
    )
    quality = compare(
        _sample(feedback.scores, feedback.score_mean, feedback.score_var),
        _sample(control_feedback.scores, control_feedback.score_mean, control_feedback.score_var),
    )
    thumbs = compare(
        Moments.proportion(feedback.thumbs, feedback.thumbs_up),
        Moments.proportion(control_feedback.thumbs, control_feedback.thumbs_up),
    )
    _set(result, "error_rate", error)
    _set(result, "latency", latency)
    _set(result, "quality", quality)
    _set(result, "thumbs_up", thumbs)
    compared = [error.p_value, latency.p_value]
    if feedback.scores and control_feedback.scores:
        compared.append(quality.p_value)
    if feedback.thumbs and control_feedback.thumbs:
        compared.append(thumbs.p_value)
    result.significant_sequential = min(compared) < ALPHA / len(compared)


def _set(result: admin_pb2.VariantResult, metric: str, outcome: SequentialResult) -> None:
    setattr(result, f"{metric}_sequential_p_value", outcome.p_value)
    setattr(result, f"{metric}_effect_cs_low", _bounded(outcome.low))
    setattr(result, f"{metric}_effect_cs_high", _bounded(outcome.high))


def control_sequential_results(result: admin_pb2.VariantResult) -> None:
    """The control compared with itself: nothing to find."""
    for metric in ("error_rate", "latency", "quality", "thumbs_up"):
        setattr(result, f"{metric}_sequential_p_value", 1.0)
