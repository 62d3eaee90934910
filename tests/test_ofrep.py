"""OFREP on the HTTP listener, driven by the official OpenFeature Python SDK and its OFREP
provider against a live replica: the same answers as ResolveModel, and OFREP's errors."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aetcd
import httpx
import pytest
from modelroute.v1 import router_pb2, types_pb2
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.helpers import (
    UNLIMITED,
    USER_EXPERIMENT,
    Running,
    eventually,
    put,
    put_applied,
)

FLAG = "/ofrep/v1/evaluate/flags/"


@pytest.fixture
async def running(seed: int, start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server(admin_port=0)


@pytest.fixture
def base_url(running: Running) -> str:
    return f"http://127.0.0.1:{running.server.admin_port}"


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture
def openfeature_client(base_url: str) -> Iterator[Callable[[dict[str, str]], OpenFeatureClient]]:
    """An OpenFeature client over the official OFREP provider (one domain per header set)."""
    domains: list[str] = []

    def make(headers: dict[str, str]) -> OpenFeatureClient:
        domain = f"modelroute-{len(domains)}"
        domains.append(domain)
        provider = OFREPProvider(base_url, headers_factory=lambda: headers, timeout=30)
        api.set_provider_and_wait(provider, domain)
        return api.get_client(domain)

    yield make
    api.clear_providers()


async def test_string_flags_equal_resolve_model_for_1000_users(
    running: Running,
    etcd: aetcd.Client,
    prefix: str,
    openfeature_client: Callable[[dict[str, str]], OpenFeatureClient],
) -> None:
    # No provider limits: 2,000 decisions must not walk into quota fallbacks.
    for provider in ("google", "openai"):
        await put(etcd, prefix, f"providers/{provider}", UNLIMITED)
    await put_applied(running, etcd, prefix, "experiments/rag-q4", USER_EXPERIMENT)
    client = openfeature_client({})
    variants = set()
    for index in range(1000):
        user_id, tier = f"user-{index}", ("free", "premium")[index % 2]
        details = await asyncio.to_thread(
            client.get_string_details,
            "rag.answer",
            "caller-default",
            EvaluationContext(user_id, {"tier": tier, "plan": "team"}),
        )
        expected = await running.router.ResolveModel(
            router_pb2.ResolveModelRequest(
                context="rag.answer", user=types_pb2.User(id=user_id, tier=tier)
            )
        )
        assert details.error_code is None, details.error_message
        assert details.value == expected.model_id, user_id
        assert details.variant == expected.variant_id, user_id
        assert details.reason == Reason.SPLIT
        assert details.flag_metadata["experimentId"] == "rag-q4"
        assert details.flag_metadata["provider"] == expected.provider
        assert details.flag_metadata["fallbacks"] == ",".join(expected.fallback_model_ids)
        assert details.flag_metadata["configRevision"] == str(expected.config_revision)
        variants.add(details.variant)
    assert variants == {"control", "mini"}


async def test_decision_id_links_usage_to_the_variant(
    running: Running,
    etcd: aetcd.Client,
    prefix: str,
    openfeature_client: Callable[[dict[str, str]], OpenFeatureClient],
) -> None:
    await put_applied(running, etcd, prefix, "experiments/rag-q4", USER_EXPERIMENT)
    details = await asyncio.to_thread(
        openfeature_client({}).get_string_details,
        "rag.answer",
        "caller-default",
        EvaluationContext("user-7"),
    )
    report = router_pb2.UsageReport(
        report_id="of-1",
        decision_id=str(details.flag_metadata["decisionId"]),
        context="rag.answer",
        model_id=details.value,
        input_tokens=5,
        outcome=types_pb2.OUTCOME_OK,
    )
    reply = await running.router.ReportUsage(router_pb2.ReportUsageRequest(reports=[report]))
    assert reply.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED, reply


async def test_reasons_and_anonymous_users(
    running: Running, http: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    unknown = (
        await http.post(FLAG + "no.such.context", json={"context": {"targetingKey": "u"}})
    ).json()
    assert (unknown["value"], unknown["reason"], unknown["variant"]) == (
        "gemini-3-flash-preview",
        "DEFAULT",
        "GLOBAL_DEFAULT",
    )
    default = (await http.post(FLAG + "reranker", json={"context": {"targetingKey": "u"}})).json()
    assert (default["reason"], default["variant"]) == ("STATIC", "CONTEXT_DEFAULT")
    await put_applied(running, etcd, prefix, "experiments/rag-q4", USER_EXPERIMENT)
    # No targeting key where the experiment buckets by user: anonymous, a warning, no error.
    anonymous = await http.post(FLAG + "rag.answer", json={"context": {"tier": "free"}})
    assert anonymous.status_code == 200, anonymous.text
    body = anonymous.json()
    assert (body["value"], body["variant"]) == ("gemini-3-flash-preview", "CONTEXT_DEFAULT")
    assert body["metadata"]["anonymous"] is True
    assert "no targetingKey" in body["metadata"]["warnings"]
    assert "rag-q4" in body["metadata"]["warnings"]
    await put(etcd, prefix, "overrides/rag.answer", {"model": "gpt-4o", "note": "incident"})

    async def overridden() -> None:
        reply = (
            await http.post(FLAG + "rag.answer", json={"context": {"targetingKey": "u"}})
        ).json()
        assert (reply["value"], reply["reason"], reply["variant"]) == (
            "gpt-4o",
            "STATIC",
            "OPERATOR_OVERRIDE",
        )

    await eventually(overridden)


async def test_errors_reach_the_caller_as_default_value_and_error_code(
    http: httpx.AsyncClient,
    openfeature_client: Callable[[dict[str, str]], OpenFeatureClient],
) -> None:
    client = openfeature_client({})
    cases = [
        ("rag.answer", EvaluationContext("u1", {"tier": "not a tier"}), ErrorCode.INVALID_CONTEXT),
        ("not a context!", EvaluationContext("u1"), ErrorCode.FLAG_NOT_FOUND),
        ("rag.answer", EvaluationContext("u1", {"nested": {"a": 1}}), ErrorCode.INVALID_CONTEXT),
    ]
    for key, context, code in cases:
        details = await asyncio.to_thread(client.get_string_details, key, "caller-default", context)
        assert details.value == "caller-default", key
        assert details.error_code == code, (key, details.error_message)
        assert details.reason == Reason.ERROR
    # What the SDK cannot send: malformed JSON, a body that is not an object.
    for body in (b"{not json", b"[1, 2]"):
        reply = await http.post(FLAG + "rag.answer", content=body)
        assert reply.status_code == 400
        assert reply.json()["errorCode"] == "PARSE_ERROR"
        assert reply.json()["key"] == "rag.answer"
    reply = await http.post(FLAG + "rag.answer", json={"context": "user-1"})
    assert (reply.status_code, reply.json()["errorCode"]) == (400, "INVALID_CONTEXT")


async def test_no_model_for_quota_reasons_is_429_with_retry_after(
    running: Running,
    http: httpx.AsyncClient,
    etcd: aetcd.Client,
    prefix: str,
    openfeature_client: Callable[[dict[str, str]], OpenFeatureClient],
) -> None:
    one = {"requests_per_minute": 1, "cooldown_seconds": 60}
    await put(etcd, prefix, "providers/google", one)
    await put_applied(running, etcd, prefix, "providers/openai", one)
    # One admission per provider per minute, shared by OFREP and gRPC: one decision path.
    first = (await http.post(FLAG + "rag.answer", json={"context": {"targetingKey": "a"}})).json()
    assert first["value"] == "gemini-3-flash-preview"
    second = await running.router.ResolveModel(
        router_pb2.ResolveModelRequest(context="rag.answer", user=types_pb2.User(id="b"))
    )
    assert second.model_id == "gpt-4o-mini"  # google's one request went to OFREP
    third = await http.post(FLAG + "rag.answer", json={"context": {"targetingKey": "c"}})
    assert third.status_code == 429, third.text
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    assert third.json()["errorCode"] == "GENERAL"
    assert "NO_MODEL_AVAILABLE" in third.json()["errorDetails"]
    details = await asyncio.to_thread(
        openfeature_client({}).get_string_details,
        "rag.answer",
        "caller-default",
        EvaluationContext("d"),
    )
    assert (details.value, details.error_code) == ("caller-default", ErrorCode.GENERAL)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_api_keys_401_403_and_bearer(
    running: Running,
    http: httpx.AsyncClient,
    etcd: aetcd.Client,
    prefix: str,
    openfeature_client: Callable[[dict[str, str]], OpenFeatureClient],
) -> None:
    await put(
        etcd,
        prefix,
        "clients/rag-app",
        {"key_sha256": sha("rag-key"), "allowed_contexts": ["rag.*"]},
    )

    async def refused() -> None:
        reply = await http.post(FLAG + "rag.answer", json={"context": {"targetingKey": "u"}})
        assert reply.status_code == 401

    await eventually(refused)
    for headers in ({"X-API-Key": "rag-key"}, {"Authorization": "Bearer rag-key"}):
        details = await asyncio.to_thread(
            openfeature_client(headers).get_string_details,
            "rag.answer",
            "x",
            EvaluationContext("u"),
        )
        assert details.value == "gemini-3-flash-preview", details.error_message
    for headers, status in (
        ({"X-API-Key": "guessed"}, 401),
        ({"Authorization": "Bearer guessed"}, 401),
        ({"X-API-Key": "rag-key"}, 403),  # reranker is not among its contexts
    ):
        key = "rag.answer" if status == 401 else "reranker"
        reply = await http.post(
            FLAG + key, json={"context": {"targetingKey": "u"}}, headers=headers
        )
        assert reply.status_code == status, reply.text
        assert "rag-key" not in reply.text
        details = await asyncio.to_thread(
            openfeature_client(headers).get_string_details, key, "x", EvaluationContext("u")
        )
        assert (details.value, details.error_code) == ("x", ErrorCode.GENERAL)
    # The bulk answer holds only the contexts the key may use.
    bulk = await http.post("/ofrep/v1/evaluate/flags", json={}, headers={"X-API-Key": "rag-key"})
    assert [f["key"] for f in bulk.json()["flags"]] == ["rag.answer"]
    # A revoked key: 401, nothing evaluated.
    await put(etcd, prefix, "clients/rag-app", {"key_sha256": sha("rag-key"), "enabled": False})

    async def revoked() -> None:
        reply = await http.post(FLAG + "rag.answer", json={}, headers={"X-API-Key": "rag-key"})
        assert reply.status_code == 401

    await eventually(revoked)


async def test_bulk_evaluation_with_etag(
    running: Running, http: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    body = {"context": {"targetingKey": "user-3", "tier": "premium"}}
    first = await http.post("/ofrep/v1/evaluate/flags", json=body)
    assert first.status_code == 200
    flags = {f["key"]: f for f in first.json()["flags"]}
    assert set(flags) == set(running.server.config.current.contexts)  # type: ignore[union-attr]
    assert flags["premium.answer"]["value"] == "gemini-3-pro-preview"
    etag = first.headers["ETag"]
    again = await http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    stale = await http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": '"x"'})
    assert stale.status_code == 200 and stale.headers["ETag"] == etag
    await put(etcd, prefix, "overrides/reranker", {"model": "gpt-4o"})

    async def changed() -> None:
        reply = await http.post(
            "/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag}
        )
        assert reply.status_code == 200
        assert {f["key"]: f["value"] for f in reply.json()["flags"]}["reranker"] == "gpt-4o"
        assert reply.headers["ETag"] != etag

    await eventually(changed)
