"""The always-valid test (mSPRT): its closed form, and its error rates under repeated looks.

Pure functions, seeded, fast. Run with `-s` to see the printed rates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from modelroute.server.usage.sequential import (
    Moments,
    always_valid_p_value,
    compare,
    mixture_variance,
)
from scipy import integrate, stats

EXPERIMENTS = 500
LOOKS = 20
CALLS_PER_LOOK = 100  # per arm
BASE_ERROR_RATE = 0.10


@pytest.mark.parametrize(("estimate", "variance", "tau2"), [(0.3, 0.04, 0.09), (-1.2, 0.5, 2.0)])
def test_closed_form_equals_the_mixture_integral(
    estimate: float, variance: float, tau2: float
) -> None:
    # Λ = ∫ N(θ; 0, τ²) · L(θ) / L(0) dθ for θ̂ ~ N(θ, V) (the definition of the mSPRT).
    def integrand(theta: float) -> float:
        ratio = math.exp((theta * estimate - theta * theta / 2) / variance)
        return float(stats.norm.pdf(theta, 0, math.sqrt(tau2))) * ratio

    mixture, _ = integrate.quad(integrand, -50, 50, points=[0.0, estimate], limit=200)
    assert always_valid_p_value(estimate, variance, tau2) == pytest.approx(1 / mixture, rel=1e-6)


@pytest.mark.parametrize(("t", "planned"), [(100, 500), (500, 500), (20_000, 500)])
def test_interval_equals_the_published_asymptotic_confidence_sequence(t: int, planned: int) -> None:
    # Waudby-Smith et al. (2024), eq. (13):
    #   mean ± sigma sqrt(2(t rho²+1)/(t² rho²) log(sqrt(t rho²+1)/alpha))
    # with rho² = (-2 log alpha + log(-2 log alpha + 1)) / t*, here with one arm known exactly.
    alpha, sigma = 0.05, 2.0
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / planned
    published = sigma * math.sqrt(
        2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha)
    )
    exact_control = Moments(10**12, 0.0, 0.0)
    result = compare(Moments(t, 1.0, sigma**2), exact_control, planned_n=planned)
    assert (result.high - result.low) / 2 == pytest.approx(published, rel=1e-9)
    assert mixture_variance(sigma**2 / planned, alpha) == pytest.approx(sigma**2 * rho2)


def _looks(rng: np.random.Generator, rate: float) -> np.ndarray:
    """Cumulative error counts at each look: shape (experiments, looks)."""
    per_look = rng.binomial(CALLS_PER_LOOK, rate, size=(EXPERIMENTS, LOOKS))
    return np.cumsum(per_look, axis=1)


def _first_detection(treatment: np.ndarray, control: np.ndarray) -> tuple[list[int], list[int]]:
    """Per experiment, the first look (1-based; 0 = never) the sequential / fixed-horizon
    test rejects at 5%."""
    sequential, fixed = [], []
    for row_t, row_c in zip(treatment, control, strict=True):
        first_seq = first_fixed = 0
        for look in range(LOOKS):
            n = CALLS_PER_LOOK * (look + 1)
            result = compare(
                Moments.proportion(n, int(row_t[look])), Moments.proportion(n, int(row_c[look]))
            )
            if not first_seq and result.p_value < 0.05:
                first_seq = look + 1
            if not first_fixed and result.fixed_horizon_p_value < 0.05:
                first_fixed = look + 1
        sequential.append(first_seq)
        fixed.append(first_fixed)
    return sequential, fixed


def test_a_a_experiments_looked_at_20_times_keep_false_positives_under_5_percent() -> None:
    rng = np.random.default_rng(20261201)
    sequential, fixed = _first_detection(_looks(rng, BASE_ERROR_RATE), _looks(rng, BASE_ERROR_RATE))
    sequential_rate = sum(1 for s in sequential if s) / EXPERIMENTS
    fixed_rate = sum(1 for f in fixed if f) / EXPERIMENTS
    print(
        f"\nA/A, {EXPERIMENTS} experiments x {LOOKS} looks: false positive rate "
        f"sequential {sequential_rate:.3f}, fixed-horizon (re-read at every look) {fixed_rate:.3f}"
    )
    assert sequential_rate <= 0.05
    # The comparison is meaningful: peeking at the fixed-horizon test does inflate.
    assert fixed_rate > 0.10


def test_a_true_five_point_difference_is_detected() -> None:
    rng = np.random.default_rng(7)
    sequential, fixed = _first_detection(
        _looks(rng, BASE_ERROR_RATE + 0.05), _looks(rng, BASE_ERROR_RATE)
    )
    detected = [s for s in sequential if s]
    power = len(detected) / EXPERIMENTS
    median_calls = int(np.median(detected)) * CALLS_PER_LOOK
    print(
        f"\n+5 points ({BASE_ERROR_RATE:.0%} -> {BASE_ERROR_RATE + 0.05:.0%}): sequential test "
        f"detects {power:.1%} within {LOOKS * CALLS_PER_LOOK} calls per arm, median after "
        f"{median_calls} calls per arm (fixed-horizon, any look: "
        f"{sum(1 for f in fixed if f and f <= LOOKS) / EXPERIMENTS:.1%})"
    )
    assert power >= 0.9
    assert median_calls <= LOOKS * CALLS_PER_LOOK


def test_no_data_gives_no_verdict() -> None:
    result = compare(Moments(1, 1.0, 0.0), Moments(0, 0.0, 0.0))
    assert (result.p_value, result.low, result.high) == (1.0, -math.inf, math.inf)
    assert not result.significant
