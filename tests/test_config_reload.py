"""Hot reload from a real etcd: every key kind, rejections, transactions, reconnects."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aetcd
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.embedded_etcd import EmbeddedEtcd, free_port
from modelroute.storage.etcd import (
    EtcdConfigSource,
    ResyncNeededError,
    connect,
    parse_endpoints,
    write_changes,
)
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Running, eventually, put


def resolve_request(
    context: str = "rag.answer", **kwargs: object
) -> router_pb2.ResolveModelRequest:
    return router_pb2.ResolveModelRequest(context=context, **kwargs)  # type: ignore[arg-type]


async def served_model(
    server: Running, context: str = "rag.answer"
) -> router_pb2.ResolveModelResponse:
    return await server.router.ResolveModel(resolve_request(context))


async def test_serves_the_seeded_usage_map(server: Running, seed: int) -> None:
    response = await served_model(server)
    assert response.model_id == "gemini-3-flash-preview"
    assert response.provider == "google"
    assert response.reason == types_pb2.REASON_CONTEXT_DEFAULT
    assert list(response.fallback_model_ids) == ["gpt-4o-mini"]
    assert response.config_revision == seed
    assert response.decision_id.startswith("d1.")
    assert response.cache_ttl.seconds == 5
    premium = await served_model(server, "premium.answer")
    assert premium.model_id == "gemini-3-pro-preview"
    assert list(premium.fallback_model_ids) == ["gpt-4o", "claude-3-sonnet", "gpt-4o-mini"]


async def test_context_change_is_served_without_restart(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    revision = await put(etcd, prefix, "contexts/rag.answer", {"model": "gpt-4o", "fallbacks": []})

    async def check() -> None:
        response = await served_model(server)
        assert (response.model_id, response.config_revision) == ("gpt-4o", revision)

    await eventually(check)


async def test_model_disabled_then_fallback_with_cause(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await put(
        etcd,
        prefix,
        "models/gemini-3-flash-preview",
        {"provider": "google", "tiers": ["free", "premium"], "enabled": False},
    )

    async def check() -> None:
        response = await served_model(server)
        assert response.model_id == "gpt-4o-mini"
        assert response.fallback.from_model_id == "gemini-3-flash-preview"
        assert response.fallback.cause == types_pb2.FALLBACK_CAUSE_DISABLED

    await eventually(check)


async def test_caller_exclusion_falls_back_with_cause(server: Running) -> None:
    response = await server.router.ResolveModel(
        resolve_request(exclude_models=["gemini-3-flash-preview"])
    )
    assert response.model_id == "gpt-4o-mini"
    assert response.fallback.cause == types_pb2.FALLBACK_CAUSE_EXCLUDED_BY_CALLER
    assert response.reason == types_pb2.REASON_CONTEXT_DEFAULT


async def test_all_models_excluded_is_resource_exhausted(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.router.ResolveModel(
            resolve_request(exclude_models=["gemini-3-flash-preview", "gpt-4o-mini"])
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EXCLUDED_BY_CALLER" in (caught.value.details() or "")


async def test_operator_override_and_its_expiry(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=1.5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await put(
        etcd,
        prefix,
        "overrides/rag.answer",
        {"model": "gpt-4o", "note": "incident 42", "expires": expires},
    )

    async def overridden() -> None:
        response = await served_model(server)
        assert response.model_id == "gpt-4o"
        assert response.reason == types_pb2.REASON_OPERATOR_OVERRIDE
        # A client must not cache past the override's expiry.
        assert response.cache_ttl.ToTimedelta() <= timedelta(seconds=1.5)

    await eventually(overridden)

    async def expired() -> None:
        response = await served_model(server)
        assert response.model_id == "gemini-3-flash-preview"
        assert response.reason == types_pb2.REASON_CONTEXT_DEFAULT

    await eventually(expired, timeout=5)


async def test_settings_change_moves_unknown_contexts(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    response = await served_model(server, "no.such.context")
    assert response.model_id == "gemini-3-flash-preview"
    assert response.reason == types_pb2.REASON_GLOBAL_DEFAULT
    assert any("unknown context" in w for w in response.warnings)
    await put(etcd, prefix, "settings", {"default_model": "gpt-4o", "default_fallbacks": []})

    async def check() -> None:
        assert (await served_model(server, "no.such.context")).model_id == "gpt-4o"

    await eventually(check)


async def test_experiment_applies_and_stops_when_disabled(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    experiment = {
        "context": "rag.answer",
        "variants": [{"id": "b", "model": "gpt-4o-mini", "weight": 100}],
        "bucket_by": "USER",
        "enabled": True,
    }
    await put(etcd, prefix, "experiments/exp1", experiment)
    request = resolve_request(user=types_pb2.User(id="42", tier="free"))

    async def running() -> None:
        response = await server.router.ResolveModel(request)
        assert (response.reason, response.experiment_id, response.variant_id) == (
            types_pb2.REASON_EXPERIMENT,
            "exp1",
            "b",
        )
        assert response.model_id == "gpt-4o-mini"

    await eventually(running)
    await put(etcd, prefix, "experiments/exp1", experiment | {"enabled": False})

    async def stopped() -> None:
        response = await server.router.ResolveModel(request)
        assert response.reason == types_pb2.REASON_CONTEXT_DEFAULT

    await eventually(stopped)


async def test_provider_kind_reloads(server: Running, etcd: aetcd.Client, prefix: str) -> None:
    before = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    await put(etcd, prefix, "providers/mistral", {"requests_per_minute": 10})

    async def check() -> None:
        status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert status.key_counts["providers"] == before.key_counts["providers"] + 1

    await eventually(check)


@pytest.mark.parametrize(
    ("value", "error_fragment"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": "no-such-model"}).encode(), "unknown model"),
        (json.dumps({"model": "gpt-4o", "fallbacks": "gpt-4o-mini"}).encode(), "fallbacks"),
        (json.dumps({"model": "gpt-4o", "typo_field": 1}).encode(), "typo_field"),
    ],
    ids=["bad-json", "unknown-model", "wrong-type", "unknown-field"],
)
async def test_bad_value_is_rejected_and_last_good_keeps_serving(
    server: Running, etcd: aetcd.Client, prefix: str, value: bytes, error_fragment: str
) -> None:
    revision = await put(etcd, prefix, "contexts/rag.answer", value)

    async def rejected() -> admin_pb2.GetConfigStatusResponse:
        status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert status.config_revision == revision
        return status

    status = await eventually(rejected)
    [rejection] = status.rejected_keys
    assert rejection.key == prefix + "contexts/rag.answer"
    assert error_fragment in rejection.error
    assert rejection.previous_value_in_force
    assert status.rejected_total >= 1
    response = await served_model(server)
    assert response.model_id == "gemini-3-flash-preview"  # the last good value
    assert response.config_revision == revision

    # Fixing the value clears the rejection.
    await put(etcd, prefix, "contexts/rag.answer", {"model": "gpt-4o"})

    async def fixed() -> None:
        status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert not status.rejected_keys
        assert (await served_model(server)).model_id == "gpt-4o"

    await eventually(fixed)


async def test_experiment_weights_must_sum_to_100(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    await put(
        etcd,
        prefix,
        "experiments/bad",
        {
            "context": "rag.answer",
            "enabled": True,
            "variants": [
                {"id": "a", "model": "gpt-4o", "weight": 60},
                {"id": "b", "model": "gpt-4o-mini", "weight": 30},
            ],
        },
    )

    async def check() -> None:
        status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
        assert any("sum to 90" in r.error for r in status.rejected_keys)
        assert not status.rejected_keys[0].previous_value_in_force

    await eventually(check)
    assert (await served_model(server)).reason == types_pb2.REASON_CONTEXT_DEFAULT


async def test_keys_of_one_transaction_apply_together(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    # A context naming a model that only exists in the same transaction is valid only if
    # both keys are applied as one revision.
    revision = await write_changes(
        etcd,
        prefix,
        {
            "contexts/new.feature": json.dumps({"model": "mistral-large"}).encode(),
            "models/mistral-large": json.dumps({"provider": "mistral"}).encode(),
        },
        0,
        [],
    )

    async def check() -> None:
        response = await served_model(server, "new.feature")
        assert response.config_revision == revision
        assert (response.model_id, response.reason) == (
            "mistral-large",
            types_pb2.REASON_CONTEXT_DEFAULT,
        )

    await eventually(check)
    status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    assert not status.rejected_keys


async def test_watch_config_streams_revisions(
    server: Running, etcd: aetcd.Client, prefix: str, seed: int
) -> None:
    stream = server.router.WatchConfig(router_pb2.WatchConfigRequest())
    first = await stream.read()
    assert first.config_revision == seed
    revision = await put(etcd, prefix, "contexts/reranker", {"model": "gpt-4o"})
    second = await stream.read()
    assert second.config_revision == revision
    stream.cancel()


async def test_env_override_wins_over_etcd(
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    monkeypatch.setenv("MODEL_RAG_ANSWER", "claude-3-sonnet")
    server = await start_server()
    await put(etcd, prefix, "overrides/rag.answer", {"model": "gpt-4o"})
    response = await served_model(server)
    assert (response.model_id, response.reason) == (
        "claude-3-sonnet",
        types_pb2.REASON_ENV_OVERRIDE,
    )
    status = await server.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    assert [(e.variable, e.model_id) for e in status.env_overrides] == [
        ("MODEL_RAG_ANSWER", "claude-3-sonnet")
    ]
    other = await served_model(server, "reranker")
    assert other.reason == types_pb2.REASON_CONTEXT_DEFAULT


@pytest.mark.parametrize(
    ("request_fields", "bad_field"),
    [
        ({"context": ""}, "context"),
        ({"context": "has spaces"}, "context"),
        ({"context": "rag.answer", "user": types_pb2.User(id="x" * 300)}, "user.id"),
        ({"context": "rag.answer", "exclude_models": ["m"] * 40}, "exclude_models"),
        ({"context": "rag.answer", "attributes": {f"k{i}": "v" for i in range(40)}}, "attributes"),
    ],
    ids=["empty-context", "bad-context", "long-user", "too-many-excluded", "too-many-attrs"],
)
async def test_invalid_request_is_invalid_argument_with_field(
    server: Running, request_fields: dict[str, object], bad_field: str
) -> None:
    from modelroute.server.api.errors import decode_details

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.router.ResolveModel(router_pb2.ResolveModelRequest(**request_fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = decode_details(caught.value)
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    fields = [v.field for v in details["BadRequest"].field_violations]  # type: ignore[attr-defined]
    assert bad_field in fields


async def test_health_not_serving_until_config_then_serving(
    start_server: Callable[..., Awaitable[Running]], tmp_path: Path, prefix: str
) -> None:
    # Its own etcd, started only after the server, so the server first runs without config.
    port = free_port()
    server_task_etcd = EmbeddedEtcd(tmp_path / "own-etcd", client_port=port)
    from modelroute.server.app import ModelrouteServer, ServeOptions

    server = ModelrouteServer(
        ServeOptions(
            port=0,
            etcd_endpoints=f"127.0.0.1:{port}",
            etcd_prefix=prefix,
            database_url=f"sqlite:///{tmp_path / 'u.db'}",
            data_dir=tmp_path / "d",
            seed=False,
        )
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router_stub(channel).ResolveModel(resolve_request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        server_task_etcd.start()

        async def serving() -> None:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, timeout=15)
    finally:
        await channel.close()
        await server.stop()
        server_task_etcd.stop()


def router_stub(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    from modelroute.v1 import router_pb2_grpc

    return router_pb2_grpc.ModelRouterServiceStub(channel)


async def test_resyncs_after_etcd_restart(
    tmp_path: Path, prefix: str, bootstrap_values: dict[str, bytes]
) -> None:
    """etcd goes away and comes back: the replica keeps serving its last snapshot, then
    applies what changed meanwhile (a full re-read, not just new events)."""
    from modelroute.server.app import ModelrouteServer, ServeOptions

    port = free_port()
    own_etcd = EmbeddedEtcd(tmp_path / "etcd", client_port=port)
    own_etcd.start()
    client = connect(parse_endpoints(own_etcd.endpoint))
    await write_changes(client, prefix, dict(bootstrap_values), 0, [])
    await client.close()
    server = ModelrouteServer(
        ServeOptions(
            port=0,
            etcd_endpoints=own_etcd.endpoint,
            etcd_prefix=prefix,
            database_url=f"sqlite:///{tmp_path / 'u.db'}",
            data_dir=tmp_path / "d",
            seed=False,
        )
    )
    await server.start()
    await server.config.wait_ready(10)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = router_stub(channel)
    try:
        own_etcd.kill()
        await eventually(lambda: _assert(not server.config_source.connected), timeout=15)
        # Still serving from the last good snapshot.
        assert (await stub.ResolveModel(resolve_request())).model_id == "gemini-3-flash-preview"
        own_etcd.start()
        client = connect(parse_endpoints(own_etcd.endpoint))
        revision = await write_changes(
            client, prefix, {"contexts/rag.answer": b'{"model": "gpt-4o"}'}, 0, []
        )
        await client.close()

        async def resynced() -> None:
            response = await stub.ResolveModel(resolve_request())
            assert (response.model_id, response.config_revision) == ("gpt-4o", revision)

        await eventually(resynced, timeout=15)
        assert server.config_source.connected
    finally:
        await channel.close()
        await server.stop()
        own_etcd.stop()


def _assert(condition: bool) -> None:
    assert condition


async def test_compacted_watch_forces_full_reread(
    etcd: aetcd.Client, prefix: str, etcd_endpoint: str
) -> None:
    first = await write_changes(etcd, prefix, {"models/a": b'{"provider":"p"}'}, 0, [])
    latest = await write_changes(etcd, prefix, {"models/a": b'{"provider":"q"}'}, 0, [])
    await etcd.compact(latest)
    source = EtcdConfigSource(parse_endpoints(etcd_endpoint), prefix)
    client = connect(parse_endpoints(etcd_endpoint))
    try:
        with pytest.raises(ResyncNeededError, match="compacted"):
            async for _ in source._watch(client, first):
                pass
    finally:
        await client.close()
