"""The Python SDK (modelroute.client) against real in-process servers and a real etcd."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from modelroute.client import (
    AllModelsFailedError,
    AsyncModelRouter,
    ControlPlaneUnavailableWarning,
    FallbackCause,
    ModelClientCache,
    ModelRouter,
    Outcome,
    Reason,
    Source,
    assign_variant,
    bucket_of,
)
from modelroute.client.classify import FailureClassifier
from modelroute.storage.embedded_etcd import free_port
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Running, eventually, put, usage_rows

RESOLVE = "/modelroute.v1.ModelRouterService/ResolveModel"
VECTORS = json.loads((Path(__file__).parent / "vectors" / "bucketing.json").read_text())


class CallCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary RPCs the SDK really sends over the wire."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method
        self.calls[method.decode() if isinstance(method, bytes) else method] += 1
        return await continuation(details, request)


class ProviderError(Exception):
    """Shaped like the errors of the common provider SDKs (status_code + headers)."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}


async def test_cache_hit_skips_the_network_and_an_etcd_change_clears_it_before_the_ttl(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    counter = CallCounter()
    async with AsyncModelRouter(server.address, interceptors=[counter]) as router:
        first = await router.resolve("rag.answer")
        assert (first.model_id, first.source, first.cache_ttl) == (
            "gemini-3-flash-preview",
            Source.SERVER,
            5.0,
        )
        again = await router.resolve("rag.answer")
        assert (again.model_id, again.source, again.decision_id) == (
            first.model_id,
            Source.CACHE,
            first.decision_id,
        )
        assert counter.calls[RESOLVE] == 1

        async def watching() -> None:
            assert router.watching

        await eventually(watching)
        await put(etcd, prefix, "contexts/rag.answer", {"model": "gpt-4o", "fallbacks": []})

        async def switched() -> None:
            assert (await router.resolve("rag.answer")).model_id == "gpt-4o"

        await eventually(switched, timeout=2)  # the cached answer's TTL is 5 s
        assert counter.calls[RESOLVE] == 2  # cache hits until the watch cleared it


async def test_zero_cache_ttl_asks_the_server_every_time(
    server: Running, etcd: aetcd.Client, prefix: str
) -> None:
    # A per-request experiment: every call must be bucketed anew, so the server says ttl 0.
    experiment = {
        "context": "rag.answer",
        "variants": [
            {"id": "a", "model": "gemini-3-flash-preview", "weight": 50},
            {"id": "b", "model": "gpt-4o-mini", "weight": 50},
        ],
        "start": "2025-01-01T00:00:00Z",
        "end": "2099-01-01T00:00:00Z",
        "bucket_by": "REQUEST",
        "enabled": True,
    }
    revision = await put(etcd, prefix, "experiments/per-request", experiment)
    counter = CallCounter()
    async with AsyncModelRouter(server.address, interceptors=[counter]) as router:

        async def applied() -> None:
            decision = await router.resolve("rag.answer", request_id="first")
            assert decision.config_revision == revision

        await eventually(applied)
        before = counter.calls[RESOLVE]
        decisions = [await router.resolve("rag.answer", request_id=f"r{i}") for i in range(40)]
        assert counter.calls[RESOLVE] == before + 40
        assert {(d.source, d.cache_ttl, d.reason) for d in decisions} == {
            (Source.SERVER, 0.0, Reason.EXPERIMENT)
        }
        assert {d.variant_id for d in decisions} == {"a", "b"}


async def test_call_with_fallback_walks_the_chain_on_429_and_the_server_cools_the_model(
    server: Running,
) -> None:
    tried: list[str] = []

    async def llm(model: str) -> str:
        tried.append(model)
        if model == "gemini-3-flash-preview":
            raise ProviderError(429, "Too Many Requests", {"Retry-After": "30"})
        return f"answer from {model}"

    router = AsyncModelRouter(server.address, report_interval=60)
    answer = await router.call_with_fallback(
        "rag.answer", llm, user="42", tier="free", usage=lambda _: (120, 30)
    )
    assert answer == "answer from gpt-4o-mini"
    assert tried == ["gemini-3-flash-preview", "gpt-4o-mini"]

    # The 429 report goes out at once (not after report_interval): every caller of the
    # server, not only this process, now gets the fallback, with the cause.
    async def cooled() -> router_pb2.ResolveModelResponse:
        response = await server.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="rag.answer")
        )
        assert response.model_id == "gpt-4o-mini"
        return response

    response = await eventually(cooled, timeout=2)
    assert response.fallback.cause == types_pb2.FALLBACK_CAUSE_COOLDOWN
    assert response.fallback.from_model_id == "gemini-3-flash-preview"
    # The SDK does not serve its cached pre-429 answer either.
    decision = await router.resolve("rag.answer", user="42", tier="free")
    assert (decision.model_id, decision.fallback_cause) == ("gpt-4o-mini", FallbackCause.COOLDOWN)

    await router.close()
    rows = usage_rows(server, "context = 'rag.answer'")
    assert [(r["model_id"], r["outcome"]) for r in rows] == [
        ("gemini-3-flash-preview", "RATE_LIMITED"),
        ("gpt-4o-mini", "OK"),
    ]
    assert rows[0]["decision_id"] and rows[0]["decision_id"] == rows[1]["decision_id"]
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"], rows[1]["user_id"]) == (
        120,
        30,
        "42",
    )


async def test_when_every_model_fails_one_error_lists_every_attempt(server: Running) -> None:
    tried: list[str] = []

    async def llm(model: str) -> str:
        tried.append(model)
        raise ProviderError(503, f"{model} is overloaded")

    async with AsyncModelRouter(server.address) as router:
        with pytest.raises(AllModelsFailedError) as raised:
            await router.call_with_fallback("premium.answer", llm, user="7", tier="premium")
    chain = ["gemini-3-pro-preview", "gpt-4o", "claude-3-sonnet", "gpt-4o-mini"]
    assert tried == chain  # each model once, then the re-resolve found nothing new
    assert [(a.model_id, a.outcome) for a in raised.value.attempts] == [
        (m, Outcome.SERVER_ERROR) for m in chain
    ]
    assert all(m in str(raised.value) for m in chain)
    assert isinstance(raised.value.__cause__, ProviderError)
    assert len(usage_rows(server, "outcome = 'SERVER_ERROR'")) == 4


async def test_invalid_request_is_raised_at_once_not_retried(server: Running) -> None:
    tried: list[str] = []

    async def llm(model: str) -> str:
        tried.append(model)
        raise ProviderError(400, "content_filter: the prompt was blocked")

    async with AsyncModelRouter(server.address) as router:
        with pytest.raises(ProviderError):
            await router.call_with_fallback("rag.answer", llm)
    assert tried == ["gemini-3-flash-preview"]
    [row] = usage_rows(server)
    assert row["outcome"] == "CONTENT_FILTERED"


async def test_env_pin_in_the_callers_process_wins_without_asking_the_server(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_RAG_ANSWER", "claude-3-sonnet")
    counter = CallCounter()
    async with AsyncModelRouter(server.address, interceptors=[counter]) as router:
        decision = await router.resolve("rag.answer")
        assert (decision.model_id, decision.reason, decision.source) == (
            "claude-3-sonnet",
            Reason.ENV_OVERRIDE,
            Source.ENV,
        )
        used = await router.call_with_fallback("rag.answer", _echo)
        assert used == "claude-3-sonnet"
        other = await router.resolve("reranker")  # other contexts still ask the server
        assert other.model_id == "gpt-4o-mini"
    assert counter.calls[RESOLVE] == 1


async def _echo(model: str) -> str:
    return model


async def test_server_down_uses_the_static_default_with_a_warning() -> None:
    router = AsyncModelRouter(
        f"127.0.0.1:{free_port()}", default_model="gpt-4o-mini", close_timeout=0.2
    )
    with pytest.warns(ControlPlaneUnavailableWarning, match="static default"):
        decision = await router.resolve("rag.answer")
    assert (decision.model_id, decision.source) == ("gpt-4o-mini", Source.STATIC_DEFAULT)
    with pytest.warns(ControlPlaneUnavailableWarning):
        assert await router.call_with_fallback("rag.answer", _echo) == "gpt-4o-mini"
    with pytest.warns(ControlPlaneUnavailableWarning, match="1 usage reports lost"):
        await router.close()


async def test_server_down_uses_the_last_known_answer(
    seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    running = await start_server()
    router = AsyncModelRouter(running.address, cache_size=0, default_model="gpt-4o-mini")
    assert (await router.resolve("premium.answer")).model_id == "gemini-3-pro-preview"
    await running.server.stop()
    with pytest.warns(ControlPlaneUnavailableWarning, match="last known"):
        decision = await router.resolve("premium.answer")
    assert (decision.model_id, decision.source) == ("gemini-3-pro-preview", Source.LAST_KNOWN)
    assert decision.fallback_model_ids == ("gpt-4o", "claude-3-sonnet", "gpt-4o-mini")
    await router.close()


async def test_reports_are_batched_and_all_stored_when_closed(server: Running) -> None:
    counter = CallCounter()
    router = AsyncModelRouter(
        server.address, interceptors=[counter], report_interval=60, report_batch_size=10_000
    )
    ids = [
        router.report("reranker", "gpt-4o-mini", input_tokens=i, output_tokens=1, latency_ms=5)
        for i in range(1500)
    ]
    await asyncio.sleep(0)  # let the background sender run: it must wait for its batch
    assert router.pending_reports == 1500
    await router.close()
    assert router.pending_reports == 0
    stored = {r["report_id"] for r in usage_rows(server)}
    assert stored == set(ids)
    # 1500 reports in two calls (the server takes at most 1000 per call).
    assert counter.calls["/modelroute.v1.ModelRouterService/ReportUsage"] == 2


async def test_sync_router_resolves_calls_and_reports_from_a_plain_thread(
    server: Running,
) -> None:
    def app() -> tuple[str, str]:
        with ModelRouter(server.address) as router:
            decision = router.resolve("reranker")

            def llm(model: str) -> str:
                if model == "gpt-4o-mini":
                    raise TimeoutError("provider took too long")
                return f"ranked by {model}"

            answer = router.call_with_fallback("reranker", llm)
            return decision.model_id, answer

    # The server shares this event loop: the blocking client must run in another thread.
    model, answer = await asyncio.to_thread(app)
    assert (model, answer) == ("gpt-4o-mini", "ranked by gemini-3-flash-preview")
    rows = usage_rows(server)
    assert [(r["model_id"], r["outcome"]) for r in rows] == [
        ("gpt-4o-mini", "TIMEOUT"),
        ("gemini-3-flash-preview", "OK"),
    ]


def test_model_client_cache_builds_once_per_model_and_invalidates() -> None:
    built: list[str] = []
    evicted: list[str] = []

    def factory(model_id: str) -> dict[str, str]:
        built.append(model_id)
        return {"model": model_id}

    cache = ModelClientCache(factory, maxsize=2, on_evict=lambda m, _: evicted.append(m))
    first = cache.get("gpt-4o")
    assert cache.get("gpt-4o") is first
    cache.get("claude-3-sonnet")
    cache.get("gpt-4o")  # most recently used: survives the next insert
    cache.get("gemini-3-pro-preview")
    assert evicted == ["claude-3-sonnet"] and "gpt-4o" in cache
    cache.invalidate("gpt-4o")
    assert cache.get("gpt-4o") is not first
    cache.invalidate()
    assert len(cache) == 0
    assert built == ["gpt-4o", "claude-3-sonnet", "gemini-3-pro-preview", "gpt-4o"]


class ExhaustedError(Exception):
    retry_after = 12.5


@pytest.mark.parametrize(
    ("error", "outcome", "retry_next", "retry_after"),
    [
        (
            ProviderError(429, "Too Many Requests", {"retry-after": "7"}),
            Outcome.RATE_LIMITED,
            True,
            7,
        ),
        (ProviderError(429, "You exceeded your current quota"), Outcome.QUOTA_EXCEEDED, True, None),
        (ExhaustedError("429 RESOURCE_EXHAUSTED"), Outcome.QUOTA_EXCEEDED, True, 12.5),
        (Exception("rate limit reached for requests"), Outcome.RATE_LIMITED, True, None),
        (ProviderError(500, "internal error"), Outcome.SERVER_ERROR, True, None),
        (TimeoutError(), Outcome.TIMEOUT, True, None),
        (
            ProviderError(400, "invalid_request_error: bad role"),
            Outcome.INVALID_REQUEST,
            False,
            None,
        ),
        (ProviderError(400, "blocked by content filter"), Outcome.CONTENT_FILTERED, False, None),
        (ValueError("something odd"), Outcome.OTHER, True, None),
    ],
)
def test_provider_errors_are_classified(
    error: Exception, outcome: Outcome, retry_next: bool, retry_after: float | None
) -> None:
    failure = FailureClassifier().classify(error)
    assert (failure.outcome, failure.retry_next_model, failure.retry_after) == (
        outcome,
        retry_next,
        retry_after,
    )


def test_custom_classifier_rules_take_precedence() -> None:
    class BillingError(Exception):
        pass

    classifier = FailureClassifier()
    classifier.add_type(BillingError, Outcome.QUOTA_EXCEEDED)
    assert classifier.classify(BillingError("card declined")).outcome == Outcome.QUOTA_EXCEEDED


@pytest.mark.parametrize(
    "case", VECTORS["cases"], ids=lambda c: f"{c['experiment_id']}/{c['unit_id'][:12]}"
)
def test_bucketing_vectors(case: dict[str, Any]) -> None:
    assert bucket_of(case["experiment_id"], case["unit_id"]) == case["bucket"]
    assert (
        assign_variant(case["experiment_id"], case["unit_id"], case["weights"])
        == (case["variant_index"])
    )
