"""`rollouts/<id>`: validation, conflicts with experiments, and resolution by share (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from modelroute.server.core.resolver import Reason, ResolveInput, bucket_of, resolve
from modelroute.server.core.rollout_spec import PROGRESS_DIR, RolloutProgress
from modelroute.server.core.snapshot import SnapshotBuilder

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BASE: dict[str, object] = {
    "models/base": {"provider": "p"},
    "models/cand": {"provider": "p"},
    "contexts/chat": {"model": "base"},
    "contexts/other": {"model": "base"},
    "settings": {"default_model": "base"},
}
ROLLOUT: dict[str, object] = {
    "context": "chat",
    "candidate": "cand",
    "steps": [
        {"percent": 1, "min_seconds": 60, "min_calls": 10},
        {"percent": 10},
        {"percent": 100},
    ],
    "guardrails": [
        {"metric": "ERROR_RATE", "max_increase": 0.02},
        {"metric": "P95_LATENCY_MS", "max_relative_increase": 0.25},
        {"metric": "QUALITY", "max_decrease": 0.05},
    ],
    "on_breach": "ROLLBACK",
    "enabled": True,
}


def j(value: object) -> bytes:
    return json.dumps(value).encode()


def builder_with(values: dict[str, object]) -> tuple[SnapshotBuilder, list[str]]:
    builder = SnapshotBuilder()
    _, rejections = builder.apply(5, {k: j(v) for k, v in values.items()}, NOW)
    return builder, [f"{r.key}: {r.error}" for r in rejections]


def test_valid_rollout_is_accepted_with_its_steps_and_guardrails() -> None:
    builder, errors = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    assert errors == []
    snapshot, _ = builder.apply(6, {}, NOW)
    spec = snapshot.rollouts["r1"]
    assert [s.percent for s in spec.steps] == [1, 10, 100]
    assert spec.guardrails[0].label == "max_increase=0.02"
    assert (spec.state, spec.percent) == ("PENDING", 1)
    assert snapshot.rollouts_by_context["chat"] is spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"context": "nope"}, "unknown context 'nope'"),
        ({"candidate": "ghost"}, "unknown model(s): candidate='ghost'"),
        ({"steps": [{"percent": 10}, {"percent": 5}]}, "does not increase"),
        ({"steps": [{"percent": 10}, {"percent": 101}]}, "use 1..100"),
        ({"steps": []}, "at least one step"),
        ({"guardrails": [{"metric": "LATENCY", "max_increase": 1}]}, "is not one of"),
        ({"guardrails": [{"metric": "ERROR_RATE"}]}, "needs exactly one bound"),
        ({"guardrails": [{"metric": "QUALITY", "max_increase": 0.1}]}, "bounded by max_decrease"),
        ({"guardrails": [{"max_increase": 0.1}]}, "metric is required"),
        ({"on_breach": "EXPLODE"}, "is not one of"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_rollout_is_rejected_and_last_good_value_stays(
    change: dict[str, object], message: str
) -> None:
    builder, errors = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    assert errors == []
    snapshot, rejections = builder.apply(6, {"rollouts/r1": j({**ROLLOUT, **change})}, NOW)
    assert len(rejections) == 1 and message in rejections[0].error, rejections
    assert rejections[0].previous_in_force
    assert snapshot.rollouts["r1"].candidate == "cand"  # the last good value serves


def test_second_rollout_on_a_context_is_rejected_naming_the_first() -> None:
    builder, errors = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    assert errors == []
    snapshot, rejections = builder.apply(6, {"rollouts/r0": j(ROLLOUT)}, NOW)
    assert [r.key for r in rejections] == ["rollouts/r0"]
    assert "rollouts/r1" in rejections[0].error
    assert set(snapshot.rollouts) == {"r1"}
    # On another context it is fine.
    _, rejections = builder.apply(7, {"rollouts/r0": j({**ROLLOUT, "context": "other"})}, NOW)
    assert rejections == []


def test_rollout_on_a_context_with_a_running_experiment_is_rejected_and_vice_versa() -> None:
    experiment = {
        "context": "chat",
        "enabled": True,
        "variants": [{"id": "a", "model": "base", "weight": 100}],
    }
    builder, errors = builder_with({**BASE, "experiments/e1": experiment})
    assert errors == []
    _, rejections = builder.apply(6, {"rollouts/r1": j(ROLLOUT)}, NOW)
    assert len(rejections) == 1 and "experiments/e1" in rejections[0].error

    builder, errors = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    _, rejections = builder.apply(6, {"experiments/e1": j(experiment)}, NOW)
    assert len(rejections) == 1 and "rollouts/r1" in rejections[0].error
    # A disabled rollout holds nothing.
    _, rejections = builder.apply(7, {"rollouts/r1": j({**ROLLOUT, "enabled": False})}, NOW)
    _, rejections = builder.apply(8, {"experiments/e1": j(experiment)}, NOW)
    assert rejections == []


def progress(percent: int, state: str = "RUNNING", step: int = 1) -> bytes:
    return RolloutProgress(state=state, step=step, percent=percent, target="chat|cand").to_json(
        "rollout-controller", "test"
    )


def test_candidate_serves_its_share_by_bucket_and_a_ramp_keeps_the_first_users() -> None:
    builder, _ = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    users = [f"user-{i}" for i in range(4000)]

    def on_candidate(percent: int) -> set[str]:
        snapshot, _ = builder.apply(9, {PROGRESS_DIR + "r1": progress(percent)}, NOW)
        chosen = set()
        for user in users:
            decision = resolve(snapshot, ResolveInput("chat", user_id=user), NOW)
            assert decision.reason == Reason.ROLLOUT and decision.experiment_id == "r1"
            arm = decision.variant_id
            assert (arm, decision.model_id) in {("candidate", "cand"), ("baseline", "base")}
            if arm == "candidate":
                chosen.add(user)
        return chosen

    one, ten = on_candidate(1), on_candidate(10)
    assert one <= ten  # the first 1% stays on the candidate at 10%
    assert 10 <= len(one) <= 80 and 300 <= len(ten) <= 500
    assert one == {u for u in users if bucket_of("r1", u) < 100}
    assert len(on_candidate(100)) == len(users)


def test_rolled_back_or_disabled_rollout_serves_the_context_default() -> None:
    builder, _ = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    snapshot, _ = builder.apply(9, {PROGRESS_DIR + "r1": progress(0, "ROLLED_BACK")}, NOW)
    for user in (f"u{i}" for i in range(500)):
        decision = resolve(snapshot, ResolveInput("chat", user_id=user), NOW)
        assert (decision.model_id, decision.reason) == ("base", Reason.CONTEXT_DEFAULT)
    assert snapshot.rollouts["r1"].state == "ROLLED_BACK"
    snapshot, _ = builder.apply(10, {"rollouts/r1": j({**ROLLOUT, "enabled": False})}, NOW)
    assert "chat" not in snapshot.rollouts_by_context
    assert snapshot.rollouts["r1"].state == "DISABLED"


def test_progress_for_another_candidate_does_not_apply() -> None:
    builder, _ = builder_with({**BASE, "rollouts/r1": ROLLOUT})
    builder.apply(9, {PROGRESS_DIR + "r1": progress(0, "ROLLED_BACK")}, NOW)
    values = {
        "models/cand2": j({"provider": "p"}),
        "rollouts/r1": j({**ROLLOUT, "candidate": "cand2"}),
    }
    snapshot, _ = builder.apply(10, values, NOW)
    assert (snapshot.rollouts["r1"].state, snapshot.rollouts["r1"].percent) == ("PENDING", 1)


def test_a_check_interval_below_one_second_is_rejected() -> None:
    builder, errors = builder_with(BASE)
    assert errors == []
    settings = {"default_model": "base", "rollout_check_seconds": 0}
    snapshot, rejections = builder.apply(6, {"settings": j(settings)}, NOW)
    assert len(rejections) == 1 and "rollout_check_seconds" in rejections[0].error
    assert snapshot.settings.rollout_check_seconds == 60  # the default stays in force
