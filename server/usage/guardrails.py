"""Judging a rollout's guardrails: candidate against baseline, with the always-valid test.

Each guardrail becomes one tested quantity θ that is positive exactly when the candidate is
worse than the bound tolerates; the guardrail is breached when the always-valid interval
of θ lies above 0. The controller gives each of a rollout's k guardrails the level 5%/k
(Bonferroni), so a candidate within every bound is stopped with probability at most 5%
over the whole rollout, however many checks it sees: because the interval stays valid at
every check, checking every few seconds does not make a healthy candidate fail more often.

- ERROR_RATE, COST_PER_CALL: θ = candidate - baseline - max_increase, or
  θ = candidate - (1 + max_relative_increase) x baseline (difference of means).
- QUALITY, THUMBS_UP_RATE: θ = baseline - candidate - max_decrease.
- P95_LATENCY_MS: a quantile has no mean to difference, so the test is on exceedances:
  T = baseline p95 + max_increase (or x (1 + max_relative_increase)); the candidate's p95
  is above T exactly when more than 5% of its calls are slower than T, so
  θ = share of candidate calls slower than T - 0.05. T is estimated from the baseline,
  which holds most of the traffic during a ramp; its own uncertainty is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ..core.rollout_spec import GuardrailSpec
from .rollout_metrics import ArmStats
from .sequential import DEFAULT_ALPHA, Moments, SequentialResult, compare

P95: Final = 0.95
# A known constant (the 5% of the p95 test) as an arm with no uncertainty.
_EXACT_ZERO: Final = Moments(2**62, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class GuardrailVerdict:
    guardrail: GuardrailSpec
    candidate_value: float
    baseline_value: float
    result: SequentialResult
    candidate_samples: int
    baseline_samples: int
    description: str

    @property
    def breached(self) -> bool:
        return self.result.low > 0

    def summary(self) -> str:
        return (
            f"{self.guardrail.metric} {self.guardrail.label}: candidate "
            f"{self.candidate_value:.4g} vs baseline {self.baseline_value:.4g} "
            f"(excess {self.result.estimate:+.4g}, 95% always-valid interval "
            f"[{_fmt(self.result.low)}, {_fmt(self.result.high)}])"
        )


def _fmt(value: float) -> str:
    return f"{value:+.4g}" if math.isfinite(value) else ("-inf" if value < 0 else "+inf")


def evaluate(
    guardrail: GuardrailSpec,
    candidate: ArmStats,
    baseline: ArmStats,
    alpha: float = DEFAULT_ALPHA,
) -> GuardrailVerdict:
    metric = guardrail.metric
    if metric == "P95_LATENCY_MS":
        return _p95(guardrail, candidate, baseline, alpha)
    if metric == "ERROR_RATE":
        cand = Moments.proportion(candidate.calls, candidate.errors)
        base = Moments.proportion(baseline.calls, baseline.errors)
        samples = (candidate.calls, baseline.calls)
    elif metric == "COST_PER_CALL":
        cand = Moments.from_sums(candidate.calls, candidate.cost_sum, candidate.cost_sq_sum)
        base = Moments.from_sums(baseline.calls, baseline.cost_sum, baseline.cost_sq_sum)
        samples = (candidate.calls, baseline.calls)
    elif metric == "QUALITY":
        cand = Moments.from_sums(
            candidate.quality_n, candidate.quality_sum, candidate.quality_sq_sum
        )
        base = Moments.from_sums(baseline.quality_n, baseline.quality_sum, baseline.quality_sq_sum)
        samples = (candidate.quality_n, baseline.quality_n)
    elif metric == "THUMBS_UP_RATE":
        cand = Moments.proportion(candidate.thumbs, candidate.thumbs_up)
        base = Moments.proportion(baseline.thumbs, baseline.thumbs_up)
        samples = (candidate.thumbs, baseline.thumbs)
    else:
        raise ValueError(f"unknown guardrail metric {metric}")
    if guardrail.bound_kind == "max_decrease":
        result = compare(base, cand, shift=guardrail.bound, alpha=alpha)
        description = f"baseline - candidate - {guardrail.bound:g} (breach when above 0)"
    elif guardrail.bound_kind == "max_relative_increase":
        factor = 1 + guardrail.bound
        result = compare(cand, base, control_factor=factor, alpha=alpha)
        description = f"candidate - {factor:g} x baseline (breach when above 0)"
    else:
        result = compare(cand, base, shift=guardrail.bound, alpha=alpha)
        description = f"candidate - baseline - {guardrail.bound:g} (breach when above 0)"
    return GuardrailVerdict(guardrail, cand.mean, base.mean, result, *samples, description)


def _p95(
    guardrail: GuardrailSpec, candidate: ArmStats, baseline: ArmStats, alpha: float
) -> GuardrailVerdict:
    baseline_p95 = baseline.latency_quantile(P95)
    if guardrail.bound_kind == "max_relative_increase":
        threshold = baseline_p95 * (1 + guardrail.bound)
    else:
        threshold = baseline_p95 + guardrail.bound
    samples = (candidate.calls, baseline.calls)
    if baseline.calls < 2:
        result = compare(Moments(0, 0.0, 0.0), _EXACT_ZERO)  # no baseline yet: no verdict
    else:
        slower = Moments.proportion(candidate.calls, candidate.calls_slower_than(threshold))
        result = compare(slower, _EXACT_ZERO, shift=1 - P95, alpha=alpha)
    return GuardrailVerdict(
        guardrail,
        candidate.latency_quantile(P95),
        baseline_p95,
        result,
        *samples,
        f"share of candidate calls slower than {threshold:g} ms - 0.05 (breach when above 0)",
    )
