"""Usage summaries and experiment comparisons: SQL aggregates in, statistics out (scipy).

Each variant is compared with the control (the first variant):
- rates (error rate, thumbs-up rate): two-proportion z-test, computed as the chi-square
  test of the 2x2 table without continuity correction (chi2 = z^2, same p-value);
- means (latency, quality score): Welch's t-test from the groups' means, variances, counts;
- `significant`: any of those p-values below 0.05 / (number of metrics compared), i.e. 5%
  family-wise (Bonferroni), so an A/A experiment is flagged in at most 5% of runs;
- sample ratio mismatch: chi-square goodness of fit of the assignments against the
  configured weights; flagged below p = 0.001 (the usual SRM threshold).
"""

from __future__ import annotations

import math

from modelroute.admin.v1 import admin_pb2
from modelroute.storage.usage_groups import FeedbackGroup, UsageGroup
from scipy import stats

from ..core.snapshot import ExperimentSpec
from .experiment_sequential import (
    add_sequential_results,
    control_sequential_results,
)

ALPHA = 0.05
SRM_ALPHA = 0.001


def usage_row(group: UsageGroup) -> admin_pb2.UsageRow:
    calls = group.calls
    return admin_pb2.UsageRow(
        key=group.key,
        calls=calls,
        errors=group.errors,
        input_tokens=group.input_tokens,
        output_tokens=group.output_tokens,
        cost_usd=group.cost_usd,
        latency_p50_ms=group.percentiles.get(50, 0.0),
        latency_p95_ms=group.percentiles.get(95, 0.0),
        latency_p99_ms=group.percentiles.get(99, 0.0),
        error_rate=group.errors / calls if calls else 0.0,
        cost_per_call_usd=group.cost_usd / calls if calls else 0.0,
        calls_by_outcome=group.by_outcome,
        latency_mean_ms=group.latency_mean_ms,
    )


def _finite(value: float, default: float = 1.0) -> float:
    return value if math.isfinite(value) else default


def proportions_p_value(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided two-proportion z-test (pooled), via scipy's 2x2 chi-square."""
    if n_a == 0 or n_b == 0:
        return 1.0
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    if (hits_a + hits_b) in (0, n_a + n_b):
        return 1.0  # no variation at all: nothing to detect
    return _finite(float(stats.chi2_contingency(table, correction=False).pvalue))


def welch_p_value(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> float:
    """Welch's t-test from summary statistics (population variances from SQL)."""
    if n_a < 2 or n_b < 2:
        return 1.0
    sd_a = math.sqrt(var_a * n_a / (n_a - 1))
    sd_b = math.sqrt(var_b * n_b / (n_b - 1))
    if sd_a == 0 and sd_b == 0:
        return 1.0 if mean_a == mean_b else 0.0
    result = stats.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False)
    return _finite(float(result.pvalue))


def mean_interval(mean: float, var: float, n: int) -> tuple[float, float]:
    """95% t interval of a mean (population variance in, sample variance used)."""
    if n < 2:
        return (mean, mean)
    sem = math.sqrt(var * n / (n - 1)) / math.sqrt(n)
    if sem == 0:
        return (mean, mean)
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def sample_ratio(experiment: ExperimentSpec, assignments: dict[str, int]) -> tuple[float, bool]:
    observed = [assignments.get(v.variant_id, 0) for v in experiment.variants]
    total = sum(observed)
    if total == 0:
        return 1.0, False
    weights = [v.weight for v in experiment.variants]
    if any(w == 0 and o > 0 for w, o in zip(weights, observed, strict=True)):
        return 0.0, True  # traffic in a variant that should get none
    pairs = [(o, total * w / 100) for o, w in zip(observed, weights, strict=True) if w > 0]
    if len(pairs) < 2:
        return 1.0, False
    p_value = _finite(float(stats.chisquare([o for o, _ in pairs], [e for _, e in pairs]).pvalue))
    return p_value, p_value < SRM_ALPHA


def experiment_results(
    experiment: ExperimentSpec,
    usage: dict[str, UsageGroup],
    feedback: dict[str, FeedbackGroup],
) -> admin_pb2.GetExperimentResultsResponse:
    response = admin_pb2.GetExperimentResultsResponse(
        experiment_id=experiment.experiment_id,
        context=experiment.context,
        bucket_by="REQUEST" if experiment.bucket_by_request else "USER",
    )
    control_id = experiment.variants[0].variant_id
    control = usage.get(control_id, UsageGroup(control_id))
    control_fb = feedback.get(control_id, FeedbackGroup(control_id))
    for variant in experiment.variants:
        group = usage.get(variant.variant_id, UsageGroup(variant.variant_id))
        fb = feedback.get(variant.variant_id, FeedbackGroup(variant.variant_id))
        low, high = mean_interval(fb.score_mean, fb.score_var, fb.scores)
        result = admin_pb2.VariantResult(
            variant_id=variant.variant_id,
            model_id=variant.model,
            weight=variant.weight,
            usage=usage_row(group),
            error_rate=group.errors / group.calls if group.calls else 0.0,
            mean_quality_score=fb.score_mean,
            quality_ci_low=low,
            quality_ci_high=high,
            thumbs_up_rate=fb.thumbs_up / fb.thumbs if fb.thumbs else 0.0,
            assignments=group.units,
            quality_scores=fb.scores,
            thumbs=fb.thumbs,
        )
        if variant.variant_id != control_id:
            control_rate = control.errors / control.calls if control.calls else 0.0
            result.error_rate_effect = result.error_rate - control_rate
            result.error_rate_p_value = proportions_p_value(
                group.errors, group.calls, control.errors, control.calls
            )
            result.latency_effect_ms = group.latency_mean_ms - control.latency_mean_ms
            result.latency_p_value = welch_p_value(
                group.latency_mean_ms,
                group.latency_var_ms2,
                group.calls,
                control.latency_mean_ms,
                control.latency_var_ms2,
                control.calls,
            )
            result.quality_effect = fb.score_mean - control_fb.score_mean
            result.quality_p_value = welch_p_value(
                fb.score_mean,
                fb.score_var,
                fb.scores,
                control_fb.score_mean,
                control_fb.score_var,
                control_fb.scores,
            )
            control_up = control_fb.thumbs_up / control_fb.thumbs if control_fb.thumbs else 0.0
            result.thumbs_up_effect = result.thumbs_up_rate - control_up
            result.thumbs_up_p_value = proportions_p_value(
                fb.thumbs_up, fb.thumbs, control_fb.thumbs_up, control_fb.thumbs
            )
            compared = [result.error_rate_p_value, result.latency_p_value]
            if fb.scores and control_fb.scores:
                compared.append(result.quality_p_value)
            if fb.thumbs and control_fb.thumbs:
                compared.append(result.thumbs_up_p_value)
            result.significant = min(compared) < ALPHA / len(compared)
            add_sequential_results(result, group, control, fb, control_fb)
        else:
            result.error_rate_p_value = result.latency_p_value = 1.0
            result.quality_p_value = result.thumbs_up_p_value = 1.0
            control_sequential_results(result)
        response.variants.append(result)
    response.sample_ratio_p_value, response.sample_ratio_mismatch = sample_ratio(
        experiment, {k: g.units for k, g in usage.items()}
    )
    return response
