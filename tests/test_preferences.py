"""Per-user preferred models (tier rules, cross-replica invalidation) and feedback, against
real etcd, real servers and the real database."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aetcd
import grpc
import pytest
from google.rpc import error_details_pb2
from modelroute.server.api.errors import decode_details
from modelroute.server.core.decision_token import DecisionTokens, new_key
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2, types_pb2
from sqlalchemy import create_engine, text

from tests.helpers import Running, eventually

PREMIUM = types_pb2.User(id="user-42", tier="premium")


def resolve(context: str, user: types_pb2.User) -> router_pb2.ResolveModelRequest:
    return router_pb2.ResolveModelRequest(context=context, user=user)


async def test_free_tier_cannot_choose_a_premium_model(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await server.router.SetUserPreference(
            router_pb2.SetUserPreferenceRequest(
                user=types_pb2.User(id="u-free", tier="free"), model_id="gemini-3-pro-preview"
            )
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "allowed: gemini-3-flash-preview, gpt-4o-mini" in (failure.value.details() or "")
    details = decode_details(failure.value)
    precondition = details["PreconditionFailure"]
    assert isinstance(precondition, error_details_pb2.PreconditionFailure)
    allowed = [v.subject for v in precondition.violations if v.type == "ALLOWED"]
    assert allowed == ["gemini-3-flash-preview", "gpt-4o-mini"]
    # Nothing was stored.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await server.router.GetUserPreference(router_pb2.GetUserPreferenceRequest(user_id="u-free"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # A context that does not let users choose is refused with what would work.
    with pytest.raises(grpc.aio.AioRpcError) as fixed:
        await server.router.SetUserPreference(
            router_pb2.SetUserPreferenceRequest(user=PREMIUM, context="reranker", model_id="gpt-4o")
        )
    assert fixed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "rag.answer" in (fixed.value.details() or "")


async def test_preference_set_on_one_replica_applies_on_the_other(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    a, b = await start_server(), await start_server()
    # b has the user cached (no preference) before the change.
    before = await b.router.ResolveModel(resolve("premium.answer", PREMIUM))
    assert (before.model_id, before.reason) == (
        "gemini-3-pro-preview",
        types_pb2.REASON_CONTEXT_DEFAULT,
    )
    await b.router.ResolveModel(resolve("premium.answer", PREMIUM))
    assert b.server.preferences.hits >= 1  # served from the cache, not the database

    stored = await a.router.SetUserPreference(
        router_pb2.SetUserPreferenceRequest(
            user=PREMIUM, context="premium.answer", model_id="claude-3-sonnet"
        )
    )
    assert stored.preference.model_id == "claude-3-sonnet"

    async def applied_on_b() -> None:
        reply = await b.router.ResolveModel(resolve("premium.answer", PREMIUM))
        assert (reply.model_id, reply.reason) == (
            "claude-3-sonnet",
            types_pb2.REASON_USER_PREFERENCE,
        )

    await eventually(applied_on_b, timeout=5)
    got = await b.router.GetUserPreference(
        router_pb2.GetUserPreferenceRequest(user_id="user-42", context="premium.answer")
    )
    assert got.preference.model_id == "claude-3-sonnet"
    # The per-context preference does not leak into other contexts.
    other = await b.router.ResolveModel(resolve("rag.answer", PREMIUM))
    assert other.reason == types_pb2.REASON_CONTEXT_DEFAULT


async def test_downgraded_user_or_disabled_model_silently_gets_the_default(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await server.router.SetUserPreference(
        router_pb2.SetUserPreferenceRequest(user=PREMIUM, model_id="gpt-4o")  # all contexts
    )
    chosen = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
    assert (chosen.model_id, chosen.reason) == ("gpt-4o", types_pb2.REASON_USER_PREFERENCE)

    downgraded = types_pb2.User(id="user-42", tier="free")
    reply = await server.router.ResolveModel(resolve("rag.answer", downgraded))
    assert (reply.model_id, reply.reason) == (
        "gemini-3-flash-preview",
        types_pb2.REASON_CONTEXT_DEFAULT,
    )
    assert any("not allowed for tier 'free'" in w for w in reply.warnings)

    model = {"provider": "openai", "tiers": ["premium"], "enabled": False}
    await write_changes(etcd, prefix, {"models/gpt-4o": json.dumps(model).encode()}, 0, [])

    async def skipped() -> None:
        reply = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
        assert reply.reason == types_pb2.REASON_CONTEXT_DEFAULT
        assert any("not available" in w for w in reply.warnings)

    await eventually(skipped)


async def test_precedence_override_then_preference_then_experiment(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    experiment = {
        "context": "rag.answer",
        "enabled": True,
        "bucket_by": "USER",
        "variants": [{"id": "only", "model": "gpt-4o-mini", "weight": 100}],
    }
    await write_changes(etcd, prefix, {"experiments/e1": json.dumps(experiment).encode()}, 0, [])

    async def experiment_applies() -> None:
        reply = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
        assert (reply.reason, reply.variant_id) == (types_pb2.REASON_EXPERIMENT, "only")

    await eventually(experiment_applies)
    await server.router.SetUserPreference(
        router_pb2.SetUserPreferenceRequest(user=PREMIUM, context="rag.answer", model_id="gpt-4o")
    )
    reply = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
    assert (reply.model_id, reply.reason) == ("gpt-4o", types_pb2.REASON_USER_PREFERENCE)
    override = {"model": "claude-3-sonnet", "note": "incident"}
    await write_changes(
        etcd, prefix, {"overrides/rag.answer": json.dumps(override).encode()}, 0, []
    )

    async def override_wins() -> None:
        reply = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
        assert (reply.model_id, reply.reason) == (
            "claude-3-sonnet",
            types_pb2.REASON_OPERATOR_OVERRIDE,
        )

    await eventually(override_wins)


async def test_feedback_is_stored_with_the_decisions_variant_from_any_replica(
    seed: int,
    etcd: aetcd.Client,
    prefix: str,
    start_server: Callable[..., Awaitable[Running]],
    database_url: str,
) -> None:
    experiment = {
        "context": "rag.answer",
        "enabled": True,
        "variants": [{"id": "b", "model": "gpt-4o-mini", "weight": 100}],
    }
    await write_changes(etcd, prefix, {"experiments/fx": json.dumps(experiment).encode()}, 0, [])
    a, b = await start_server(), await start_server()

    async def same_key() -> None:  # both replicas sign with the deployment's key
        assert a.server.decision_keys.tokens.key == b.server.decision_keys.tokens.key

    await eventually(same_key)

    async def in_experiment() -> router_pb2.ResolveModelResponse:
        reply = await a.router.ResolveModel(resolve("rag.answer", PREMIUM))
        assert reply.variant_id == "b"
        return reply

    decision = await eventually(in_experiment)
    thumbs = await b.router.SubmitFeedback(
        router_pb2.SubmitFeedbackRequest(
            decision_id=decision.decision_id, thumbs=router_pb2.THUMBS_UP
        )
    )
    score = await b.router.SubmitFeedback(
        router_pb2.SubmitFeedbackRequest(
            decision_id=decision.decision_id,
            quality_score=0.75,
            source=router_pb2.FEEDBACK_SOURCE_REVIEWER,
            comment="grounded",
        )
    )
    assert thumbs.feedback_id != score.feedback_id
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT thumbs, quality_score, source, experiment_id, variant_id, model_id, context"
                " FROM llm_feedback ORDER BY id"
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("UP", None, "USER", "fx", "b", "gpt-4o-mini", "rag.answer"),
        (None, 0.75, "REVIEWER", "fx", "b", "gpt-4o-mini", "rag.answer"),
    ]


@pytest.mark.parametrize(
    ("field", "request_fields", "code"),
    [
        ("quality_score", {"quality_score": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
        ("quality_score", {"quality_score": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT),
        ("thumbs", {}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            "decision_id",
            {"decision_id": "not-a-decision", "thumbs": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ("decision_id", {"decision_id": "d1.!!!.x", "thumbs": 1}, grpc.StatusCode.INVALID_ARGUMENT),
        ("decision_id", {"decision_id": "", "thumbs": 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_feedback_is_rejected_with_the_field(
    server: Running, field: str, request_fields: dict[str, object], code: grpc.StatusCode
) -> None:
    decision = await server.router.ResolveModel(resolve("rag.answer", PREMIUM))
    request = router_pb2.SubmitFeedbackRequest(decision_id=decision.decision_id)
    for name, value in request_fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await server.router.SubmitFeedback(request)
    assert failure.value.code() == code
    bad_request = decode_details(failure.value)["BadRequest"]
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert field in [v.field for v in bad_request.field_violations]


async def test_well_formed_but_unknown_decision_id_is_not_found(server: Running) -> None:
    forged = DecisionTokens(new_key()).encode(
        context="rag.answer",
        model_id="gpt-4o",
        reason=types_pb2.REASON_EXPERIMENT,
        experiment_id="e",
        variant_id="b",
        config_revision=1,
        issued_at_ms=0,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await server.router.SubmitFeedback(
            router_pb2.SubmitFeedbackRequest(decision_id=forged, thumbs=router_pb2.THUMBS_UP)
        )
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    # A usage report carrying it is refused too: it would skew the variant's results.
    reply = await server.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[
                router_pb2.UsageReport(
                    report_id="forged",
                    decision_id=forged,
                    context="rag.answer",
                    model_id="gpt-4o",
                    outcome=types_pb2.OUTCOME_OK,
                )
            ]
        )
    )
    assert reply.results[0].status == router_pb2.REPORT_STATUS_REJECTED
    assert "unknown decision id" in reply.results[0].error


async def test_list_models_by_tier(server: Running) -> None:
    free = await server.router.ListModels(router_pb2.ListModelsRequest(tier="free"))
    assert [m.model_id for m in free.models] == ["gemini-3-flash-preview", "gpt-4o-mini"]
    premium = await server.router.ListModels(router_pb2.ListModelsRequest(tier="premium"))
    assert {"gemini-3-pro-preview", "gpt-4o", "claude-3-sonnet"} <= {
        m.model_id for m in premium.models
    }
