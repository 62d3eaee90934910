"""The controller's decision for one rollout, and each guardrail's judgement (pure)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from modelroute.server.core.rollout_spec import PROGRESS_DIR, RolloutProgress, RolloutSpec
from modelroute.server.core.snapshot import SnapshotBuilder
from modelroute.server.usage.rollout_controller import decide
from modelroute.server.usage.rollout_metrics import ArmStats
from modelroute.storage.rollups import bucket_value, latency_bucket

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def spec_with(
    guardrails: list[dict[str, object]],
    *,
    on_breach: str = "ROLLBACK",
    progress: RolloutProgress | None = None,
) -> RolloutSpec:
    values = {
        "models/base": b'{"provider": "p"}',
        "models/cand": b'{"provider": "p"}',
        "contexts/chat": b'{"model": "base"}',
        "rollouts/r": json.dumps(
            {
                "context": "chat",
                "candidate": "cand",
                "steps": [{"percent": 5, "min_seconds": 600, "min_calls": 100}, {"percent": 100}],
                "guardrails": guardrails,
                "on_breach": on_breach,
                "enabled": True,
            }
        ).encode(),
    }
    if progress is not None:
        values[PROGRESS_DIR + "r"] = progress.to_json("test", "")
    snapshot, rejected = SnapshotBuilder().apply(1, values, NOW)
    assert not rejected, rejected
    return snapshot.rollouts["r"]


STEP_START = NOW - timedelta(hours=1)
RUNNING = RolloutProgress("RUNNING", 0, 5, STEP_START, STEP_START, "chat|cand")


def arm(
    calls: int,
    *,
    error_rate: float = 0.02,
    latency: float = 200.0,
    quality: float = 0.8,
    seed: int = 0,
) -> ArmStats:
    rng = random.Random(seed)
    stats = ArmStats(calls=calls, calls_since_step=calls)
    for _ in range(calls):
        stats.errors += rng.random() < error_rate
        cost = 0.001 * (1 + rng.random())
        stats.cost_sum += cost
        stats.cost_sq_sum += cost * cost
        bucket = bucket_value(latency_bucket(int(rng.lognormvariate(0, 0.3) * latency)))
        stats.latency_histogram[bucket] = stats.latency_histogram.get(bucket, 0) + 1
        score = min(1.0, max(0.0, rng.gauss(quality, 0.1)))
        stats.quality_n += 1
        stats.quality_sum += score
        stats.quality_sq_sum += score * score
    return stats


def test_a_new_rollout_starts_at_its_first_step() -> None:
    decision = decide(spec_with([]), {}, NOW)
    assert decision.progress is not None
    assert (decision.progress.state, decision.progress.percent) == ("RUNNING", 5)
    assert decision.progress.started_at == NOW and decision.alert is None


def test_healthy_arms_advance_only_when_both_minimums_are_met() -> None:
    guardrails: list[dict[str, object]] = [
        {"metric": "ERROR_RATE", "max_increase": 0.02},
        {"metric": "P95_LATENCY_MS", "max_relative_increase": 0.25},
        {"metric": "COST_PER_CALL", "max_relative_increase": 0.5},
        {"metric": "QUALITY", "max_decrease": 0.05},
    ]
    spec = spec_with(guardrails, progress=RUNNING)
    healthy = {"candidate": arm(400, seed=1), "baseline": arm(8000, seed=2)}
    decision = decide(spec, healthy, NOW)
    assert not any(v.breached for v in decision.verdicts)
    assert decision.progress is not None and decision.progress.percent == 100
    assert decision.progress.decisions[-1].action == "advanced"
    # Too few candidate calls in the step, or too little time: hold.
    few = {"candidate": arm(50, seed=1), "baseline": arm(8000, seed=2)}
    assert decide(spec, few, NOW).progress is None
    assert decide(spec, healthy, STEP_START + timedelta(seconds=599)).progress is None


def test_slow_candidate_breaches_the_p95_guardrail_and_pause_holds_the_share() -> None:
    spec = spec_with(
        [{"metric": "P95_LATENCY_MS", "max_relative_increase": 0.25}],
        on_breach="PAUSE",
        progress=RUNNING,
    )
    arms = {"candidate": arm(600, latency=400, seed=3), "baseline": arm(8000, seed=4)}
    decision = decide(spec, arms, NOW)
    assert decision.verdicts[0].breached
    assert decision.verdicts[0].candidate_value > 1.25 * decision.verdicts[0].baseline_value
    assert decision.progress is not None
    assert (decision.progress.state, decision.progress.percent) == ("PAUSED", 5)
    assert decision.alert is not None and decision.alert.kind == "rollout_paused"


def test_lower_quality_breaches_max_decrease_and_rolls_back() -> None:
    spec = spec_with([{"metric": "QUALITY", "max_decrease": 0.05}], progress=RUNNING)
    arms = {"candidate": arm(300, quality=0.6, seed=5), "baseline": arm(5000, seed=6)}
    decision = decide(spec, arms, NOW)
    assert decision.verdicts[0].breached
    assert decision.progress is not None
    assert (decision.progress.state, decision.progress.percent) == ("ROLLED_BACK", 0)
    assert decision.alert is not None and decision.alert.severity == "critical"


def test_a_small_increase_within_the_bound_is_no_breach() -> None:
    spec = spec_with([{"metric": "ERROR_RATE", "max_increase": 0.05}], progress=RUNNING)
    arms = {
        "candidate": arm(5000, error_rate=0.04, seed=7),
        "baseline": arm(50000, error_rate=0.02, seed=8),
    }
    assert not decide(spec, arms, NOW).verdicts[0].breached


def test_finished_or_rolled_back_rollouts_are_left_alone() -> None:
    for state in ("ROLLED_BACK", "PAUSED", "COMPLETED"):
        progress = RolloutProgress(state, 1, 100, NOW, NOW, "chat|cand")
        assert decide(spec_with([], progress=progress), {}, NOW).progress is None


def test_a_candidate_exactly_at_its_bound_is_stopped_at_most_5_percent_of_the_time() -> None:
    """300 simulated rollouts, each checked 20 times (the worst case: the candidate's
    error rate is exactly baseline + max_increase), judged as the controller judges."""
    spec = spec_with([{"metric": "ERROR_RATE", "max_increase": 0.02}], progress=RUNNING)
    rng = random.Random(12)
    stopped = 0
    for _ in range(300):
        candidate, baseline = ArmStats(), ArmStats()
        for _check in range(20):
            for _call in range(20):
                candidate.calls += 1
                candidate.errors += rng.random() < 0.07
            for _call in range(180):
                baseline.calls += 1
                baseline.errors += rng.random() < 0.05
            verdict = decide(spec, {"candidate": candidate, "baseline": baseline}, NOW)
            if any(v.breached for v in verdict.verdicts):
                stopped += 1
                break
    print(f"\nstopped at the bound: {stopped / 300:.1%} of 300 rollouts x 20 checks")
    assert stopped / 300 <= 0.05


def test_the_controller_writes_the_config_historys_companion_key_in_its_format() -> None:
    # usage/ may not import runtime/, so the controller names the key itself; they agree.
    from modelroute.server.runtime.change_meta import ACTOR_ROLLOUT_CONTROLLER, META_KEY
    from modelroute.server.usage import rollout_controller

    assert rollout_controller.CHANGE_META_KEY == META_KEY
    assert rollout_controller.ACTOR == ACTOR_ROLLOUT_CONTROLLER
