"""The SDK's enums mirror the contract's: a decision with any reason or cause the server can
send converts (a rollout decision once crashed the SDK with ValueError), and a value newer
than the SDK reads as UNSPECIFIED instead of failing the caller's request."""

from __future__ import annotations

import pytest
from modelroute.client.decision import Decision, FallbackCause, Reason
from modelroute.v1 import router_pb2, types_pb2


@pytest.mark.parametrize(
    ("sdk_enum", "proto_enum", "prefix"),
    [
        (Reason, types_pb2.Reason, "REASON_"),
        (FallbackCause, types_pb2.FallbackCause, "FALLBACK_CAUSE_"),
    ],
)
def test_every_contract_value_has_a_member_of_the_same_name(sdk_enum, proto_enum, prefix) -> None:
    for name, number in proto_enum.items():
        assert sdk_enum(number).name == name.removeprefix(prefix)


def test_a_rollout_decision_converts() -> None:
    response = router_pb2.ResolveModelResponse(
        model_id="gpt-4o-mini",
        reason=types_pb2.REASON_ROLLOUT,
        experiment_id="ramp",
        variant_id="candidate",
    )
    decision = Decision.from_response("rag.answer", response)
    assert decision.reason is Reason.ROLLOUT


def test_values_newer_than_the_sdk_read_as_unspecified() -> None:
    assert Reason(999) is Reason.UNSPECIFIED
    assert FallbackCause(999) is FallbackCause.UNSPECIFIED
