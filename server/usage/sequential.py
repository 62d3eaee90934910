"""Always-valid (sequential) inference for A/B comparisons: a mixture SPRT.

A fixed-horizon p-value is valid for one look at a sample size fixed in advance; reading
it at every controller check or every dashboard refresh inflates false positives (20
looks at 5% give ~25%). This module gives p-values and confidence sequences that stay
valid whenever, and however often, they are looked at, with stopping at any time.

Method: the normal-mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B tests"
(Operations Research 70(3), 2022), on the difference of two means, with the plug-in
variance of the asymptotic confidence sequences of Waudby-Smith, Arnold, Wu, McAuliffe and
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (Annals of
Statistics 52(6), 2024). For the tested quantity θ = μ_T - c·μ_C - δ with estimate θ̂ and
variance V = s_T²/n_T + c²·s_C²/n_C, mixing θ over N(0, τ²) gives the likelihood ratio

    Λ = sqrt(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²)))

whose reciprocal is an always-valid p-value (Ville's inequality: P(∃ look: Λ ≥ 1/alpha) ≤ alpha),
and whose level set is the confidence sequence θ̂ ± sqrt(V (V+τ²)/τ² · (2 log(1/alpha) +
log((V+τ²)/V))). τ² = V* · (-2 log alpha + log(1 - 2 log alpha)) makes the sequence tightest when
each arm holds `planned_n` observations (V* is V at that size): the rho of Waudby-Smith et
al.'s eq. (13). `tests/test_sequential.py` checks the closed form against numerical
integration of the mixture and against their formula, and the error rates by simulation.

Why not a package: `confseq` does not build on Python 3.11 here (C++ extension) and
`savvi` pulls in a convex-optimisation stack and updates one observation at a time, while
the controller works from SQL aggregates (count, sum, sum of squares) of a million rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from scipy.stats import norm

DEFAULT_ALPHA: Final = 0.05
# Calls per arm at which the confidence sequence is tightest; wide enough for a rollout's
# first step and an experiment's first days, and the width grows only like sqrt(log n).
DEFAULT_PLANNED_N: Final = 500


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, mean and (unbiased) variance of one arm's observations."""

    n: int
    mean: float
    variance: float

    @classmethod
    def from_sums(cls, n: int, total: float, total_squares: float) -> Moments:
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        variance = max(0.0, (total_squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, variance)

    @classmethod
    def proportion(cls, n: int, successes: int) -> Moments:
        """A 0/1 outcome. The variance uses (x+1)/(n+2) so that an arm with no events yet
        does not claim zero variance (which would make any difference look certain)."""
        if n <= 0:
            return cls(0, 0.0, 0.0)
        smoothed = (successes + 1) / (n + 2)
        return cls(n, successes / n, smoothed * (1 - smoothed))


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """θ̂ with its always-valid interval and p-value (H0: θ = 0), and the fixed-horizon
    z-test p-value beside it for comparison (valid only for a single look)."""

    estimate: float
    low: float
    high: float
    p_value: float
    fixed_horizon_p_value: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


UNKNOWN: Final = SequentialResult(0.0, -math.inf, math.inf, 1.0, 1.0)


def mixture_variance(reference_variance: float, alpha: float) -> float:
    """τ² that makes the sequence tightest where V equals `reference_variance`."""
    log_term = -2 * math.log(alpha)
    return reference_variance * (log_term + math.log(1 + log_term))


def compare(
    treatment: Moments,
    control: Moments,
    *,
    control_factor: float = 1.0,
    shift: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    planned_n: int = DEFAULT_PLANNED_N,
) -> SequentialResult:
    """Always-valid inference on θ = mean_T - control_factor · mean_C - shift.

    `control_factor` = 1 + r tests a relative bound (candidate more than r above the
    baseline); `shift` tests an absolute one. Needs two observations per arm."""
    if treatment.n < 2 or control.n < 2:
        return UNKNOWN
    c2 = control_factor * control_factor
    variance = treatment.variance / treatment.n + c2 * control.variance / control.n
    estimate = treatment.mean - control_factor * control.mean - shift
    if variance <= 0:
        # Both arms constant: the difference is known exactly.
        p_value = 1.0 if estimate == 0 else 0.0
        return SequentialResult(estimate, estimate, estimate, p_value, p_value)
    reference = (treatment.variance + c2 * control.variance) / planned_n
    tau2 = mixture_variance(reference if reference > 0 else variance, alpha)
    half_width = math.sqrt(
        variance
        * (variance + tau2)
        / tau2
        * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance))
    )
    return SequentialResult(
        estimate=estimate,
        low=estimate - half_width,
        high=estimate + half_width,
        p_value=always_valid_p_value(estimate, variance, tau2),
        fixed_horizon_p_value=float(2 * norm.sf(abs(estimate) / math.sqrt(variance))),
    )


def always_valid_p_value(estimate: float, variance: float, tau2: float) -> float:
    """1 / Λ (capped at 1) for H0: θ = 0, computed in logs to stay finite."""
    log_lr = 0.5 * math.log(variance / (variance + tau2)) + (
        estimate * estimate * tau2 / (2 * variance * (variance + tau2))
    )
    return 1.0 if log_lr <= 0 else math.exp(-log_lr)
