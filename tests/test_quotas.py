"""Provider limits, budgets, alerts and the "nothing left" error, across real replicas."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aetcd
import grpc
import pytest
from google.protobuf import duration_pb2
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.api.errors import decode_details, locale_from
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import Running, ServerProcess, WebhookReceiver, eventually, run_cli

RAG = router_pb2.ResolveModelRequest(context="rag.answer")
PREMIUM = router_pb2.ResolveModelRequest(
    context="premium.answer", user=types_pb2.User(id="u1", tier="premium")
)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


async def put_values(etcd: aetcd.Client, prefix: str, values: dict[str, object]) -> int:
    changes = {key: json.dumps(value).encode() for key, value in values.items()}
    return await write_changes(etcd, prefix, changes, 0, [])  # type: ignore[arg-type]


async def wait_for_revision(replicas: list[Running], revision: int) -> None:
    async def applied() -> None:
        for replica in replicas:
            current = replica.server.config.current
            assert current is not None and current.revision >= revision

    await eventually(applied)


async def alerts_settled(replicas: list[Running]) -> None:
    """Every replica has stored/discarded its queued alerts and finished its POSTs."""

    async def settled() -> None:
        for replica in replicas:
            sink = replica.server.alerts
            assert sink is not None
            assert sink._queue.empty() and not sink._deliveries

    await eventually(settled)


def usage(report_id: str, context: str, model: str, input_tokens: int) -> router_pb2.UsageReport:
    return router_pb2.UsageReport(
        report_id=report_id,
        context=context,
        model_id=model,
        outcome=types_pb2.OUTCOME_OK,
        input_tokens=input_tokens,
        output_tokens=0,
    )


async def test_request_limit_holds_across_two_replica_processes(
    etcd: aetcd.Client,
    etcd_endpoint: str,
    prefix: str,
    seed: int,
    database_url: str,
    tmp_path: Path,
) -> None:
    limit = 600
    await put_values(
        etcd,
        prefix,
        {
            "providers/google": {"requestsPerMinute": limit, "warnRatio": 0.8},
            "providers/openai": {"requestsPerMinute": 100 * limit},  # the fallback's
        },
    )

    # The limit is per UTC minute: start the load early in a minute so it fits in one.
    def early_in_minute() -> None:
        assert datetime.now(UTC).second < 45

    await eventually(early_in_minute, timeout=20, interval=0.2)

    def start(index: int) -> ServerProcess:
        return ServerProcess(
            [
                "--etcd-endpoints",
                etcd_endpoint,
                "--etcd-prefix",
                prefix,
                "--database-url",
                database_url,
                "--data-dir",
                str(tmp_path / f"replica{index}"),
            ]
        )

    replicas = await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(2)))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
    try:
        routers = [router_pb2_grpc.ModelRouterServiceStub(c) for c in channels]
        admins = [admin_pb2_grpc.AdminServiceStub(c) for c in channels]
        served: Counter[str] = Counter()
        causes: Counter[int] = Counter()
        window = datetime.now(UTC).replace(second=0, microsecond=0)
        sent = 0

        async def worker(index: int) -> None:
            nonlocal sent
            router = routers[index % 2]
            while sent < 2 * limit:
                sent += 1
                response = await router.ResolveModel(
                    router_pb2.ResolveModelRequest(
                        context="rag.answer", user=types_pb2.User(id=f"user-{sent}")
                    )
                )
                served[response.model_id] += 1
                causes[response.fallback.cause] += 1

        await asyncio.gather(*(worker(i) for i in range(16)))
        assert datetime.now(UTC).replace(second=0, microsecond=0) == window, "crossed a minute"

        # The documented bound (server/runtime/quotas.py): never over the limit. Nothing is
        # refused early either: every request until the limit is admitted.
        assert served["gemini-3-flash-preview"] == limit, served
        assert served["gpt-4o-mini"] == 2 * limit - served["gemini-3-flash-preview"]
        assert causes[types_pb2.FALLBACK_CAUSE_PROVIDER_QUOTA] == served["gpt-4o-mini"]

        async def status_shows_exhausted() -> admin_pb2.GetConfigStatusResponse:
            # Summed over replicas from their publications (about once a second).
            status = await admins[1].GetConfigStatus(admin_pb2.GetConfigStatusRequest())
            assert status.live_replicas == 2
            google = [q for q in status.quotas if q.provider == "google"]
            assert [(q.limit, q.limit_value, q.remaining, q.is_exceeded) for q in google] == [
                ("requests_per_minute", limit, 0, True)
            ]
            return status

        status = await eventually(status_shows_exhausted, timeout=5)
        google = [q for q in status.quotas if q.provider == "google"]
        assert (google[0].reset_at.ToDatetime(UTC) - window).total_seconds() == 60

        async def both_alerts() -> Counter[str]:
            reply = await admins[0].ListAlerts(admin_pb2.ListAlertsRequest())
            kinds = Counter(a.kind for a in reply.alerts if a.subject == "google")
            assert kinds["quota_warning"] == 1 and kinds["quota_exhausted"] == 1, kinds
            return kinds

        await eventually(both_alerts)
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            assert replica.stop() == 0


async def test_token_limit_from_reports_moves_traffic(
    etcd: aetcd.Client, prefix: str, seed: int, start_server: Callable[..., Awaitable[Running]]
) -> None:
    revision = await put_values(etcd, prefix, {"providers/google": {"tokensPerDay": 10_000}})
    replica = await start_server()
    await wait_for_revision([replica], revision)
    await replica.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[usage("t1", "rag.answer", "gemini-3-flash-preview", 9_999)]
        )
    )
    assert (await replica.router.ResolveModel(RAG)).model_id == "gemini-3-flash-preview"
    await replica.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[usage("t2", "rag.answer", "gemini-3-flash-preview", 1)]
        )
    )
    response = await replica.router.ResolveModel(RAG)
    assert (response.model_id, response.fallback.cause) == (
        "gpt-4o-mini",
        types_pb2.FALLBACK_CAUSE_PROVIDER_QUOTA,
    )
    status = await replica.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    (tokens,) = [q for q in status.quotas if q.provider == "google" and q.limit == "tokens_per_day"]
    assert (tokens.remaining, tokens.is_exceeded) == (0, True)
    assert tokens.reset_at.ToDatetime(UTC).hour == 0  # next UTC midnight
    # Operators see the same in the CLI tables.
    shown = await run_cli("quotas", "--server", replica.address, etcd="", prefix=prefix)
    assert shown.returncode == 0, shown.stderr
    (row,) = [line.split() for line in shown.stdout.splitlines() if "tokens_per_day" in line]
    assert row[0] == "google" and row[2:5] == ["10000", "10000", "0"] and row[-1] == "EXCEEDED"
    await alerts_settled([replica])
    listed = await run_cli("alerts", "--server", replica.address, etcd="", prefix=prefix)
    assert "quota_exhausted" in listed.stdout and "google" in listed.stdout, listed.stdout


async def test_budget_fallback_then_deny_with_alerts_sent_once(
    etcd: aetcd.Client,
    prefix: str,
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    webhook: WebhookReceiver,
) -> None:
    revision = await put_values(
        etcd,
        prefix,
        {
            "contexts/premium.answer": {
                "model": "gemini-3-pro-preview",
                "fallbacks": ["gpt-4o", "claude-3-sonnet"],
                "budget": {"usdPerDay": 1.0, "warnRatio": 0.5, "onExceeded": "FALLBACK"},
            },
            "settings": {
                "defaultModel": "gemini-3-flash-preview",
                "defaultFallbacks": ["gpt-4o-mini"],
                "alertWebhookUrl": webhook.url,
            },
        },
    )
    replica_a, replica_b = await start_server(), await start_server()
    await wait_for_revision([replica_a, replica_b], revision)
    assert (await replica_b.router.ResolveModel(PREMIUM)).model_id == "gemini-3-pro-preview"

    # $0.60 of the $1.00 budget (gemini-3-pro-preview: $2 per million input tokens).
    reply = await replica_a.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[usage("b1", "premium.answer", "gemini-3-pro-preview", 300_000)]
        )
    )
    assert reply.results[0].estimated_cost_usd == pytest.approx(0.6)
    # Replica B learns A's spend from the published counts; then $0.60 more crosses it.
    status = await eventually(lambda: _spent_at_least(replica_b, 0.6), timeout=5)
    assert status.on_exceeded == "fallback" and not status.is_exceeded
    await replica_b.router.ReportUsage(
        router_pb2.ReportUsageRequest(
            reports=[usage("b2", "premium.answer", "gemini-3-pro-preview", 300_000)]
        )
    )

    async def falls_back(replica: Running) -> None:
        response = await replica.router.ResolveModel(PREMIUM)
        # The cheapest available fallback, not the next in the chain (gpt-4o).
        assert (response.model_id, response.fallback.cause) == (
            "gpt-4o-mini",
            types_pb2.FALLBACK_CAUSE_BUDGET,
        )

    await eventually(lambda: falls_back(replica_b))
    await eventually(lambda: falls_back(replica_a), timeout=5)

    # More spend on both replicas: the conditions are already raised; no new alerts.
    for index, replica in enumerate((replica_a, replica_b, replica_a)):
        await replica.router.ReportUsage(
            router_pb2.ReportUsageRequest(
                reports=[usage(f"b{3 + index}", "premium.answer", "gpt-4o-mini", 1_000)]
            )
        )

    async def alerted() -> None:
        kinds = webhook.kinds()
        assert kinds["budget_warning"] >= 1 and kinds["budget_exceeded"] >= 1

    await eventually(alerted, timeout=5)
    await alerts_settled([replica_a, replica_b])
    assert webhook.kinds() == Counter({"budget_warning": 1, "budget_exceeded": 1})
    (exceeded,) = [a for a in webhook.received if a["kind"] == "budget_exceeded"]
    assert exceeded["subject"] == "premium.answer" and exceeded["severity"] == "critical"
    listed = await replica_b.admin.ListAlerts(admin_pb2.ListAlertsRequest())
    assert Counter(a.kind for a in listed.alerts) == Counter(
        {"budget_warning": 1, "budget_exceeded": 1}
    )
    assert listed.alerts[0].created_at.ToDatetime() >= listed.alerts[1].created_at.ToDatetime()

    # DENY: refused with the reason, the reset time and a sentence for the end user.
    revision = await put_values(
        etcd,
        prefix,
        {
            "contexts/premium.answer": {
                "model": "gemini-3-pro-preview",
                "fallbacks": ["gpt-4o"],
                "budget": {"usdPerDay": 1.0, "onExceeded": "DENY"},
            }
        },
    )
    await wait_for_revision([replica_a], revision)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await replica_a.router.ResolveModel(PREMIUM, metadata=(("accept-language", "ko-KR"),))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = decode_details(caught.value)
    assert details["ErrorInfo"].reason == "BUDGET_EXCEEDED"  # type: ignore[attr-defined]
    assert "premium.answer budget" in details["ErrorInfo"].metadata["limits"]  # type: ignore[attr-defined]
    retry: duration_pb2.Duration = details["RetryInfo"].retry_delay  # type: ignore[attr-defined]
    midnight_in = (
        86_400
        - (
            datetime.now(UTC) - datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        ).total_seconds()
    )
    assert abs(retry.ToTimedelta().total_seconds() - midnight_in) < 5
    message = details["LocalizedMessage"]
    assert message.locale == "ko" and "한도" in message.message  # type: ignore[attr-defined]


async def _spent_at_least(replica: Running, usd: float) -> admin_pb2.BudgetStatus:
    status = await replica.admin.GetConfigStatus(admin_pb2.GetConfigStatusRequest())
    (budget,) = [b for b in status.budgets if b.context == "premium.answer"]
    assert budget.spent_usd >= usd - 1e-9
    return budget


async def test_nothing_left_is_resource_exhausted_in_the_users_language(
    server: Running,
) -> None:
    retry = duration_pb2.Duration(seconds=30)
    reports = [
        router_pb2.UsageReport(
            report_id=f"q-{model}",
            context="rag.answer",
            model_id=model,
            outcome=types_pb2.OUTCOME_QUOTA_EXCEEDED,
            retry_after=retry,
        )
        for model in ("gemini-3-flash-preview", "gpt-4o-mini")
    ]
    await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))

    async def exhausted(language: str | None) -> grpc.aio.AioRpcError:
        metadata = (("accept-language", language),) if language else None
        try:
            served = await server.router.ResolveModel(RAG, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            return error
        raise AssertionError(f"still served {served.model_id}")

    error = await eventually(lambda: exhausted("ko,en;q=0.8"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = decode_details(error)
    info = details["ErrorInfo"]
    assert info.reason == "NO_MODEL_AVAILABLE"  # type: ignore[attr-defined]
    assert info.metadata["skipped"] == (  # type: ignore[attr-defined]
        "gemini-3-flash-preview:COOLDOWN,gpt-4o-mini:COOLDOWN"
    )
    assert "models/gpt-4o-mini cooling down until" in info.metadata["limits"]  # type: ignore[attr-defined]
    delay = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
    assert 25 < delay <= 30
    korean = details["LocalizedMessage"]
    assert (korean.locale, korean.message) == (  # type: ignore[attr-defined]
        "ko",
        "AI 어시스턴트를 일시적으로 사용할 수 없습니다. 잠시 후 다시 시도해 주세요.",
    )
    english = decode_details(await exhausted(None))["LocalizedMessage"]
    assert english.locale == "en" and "temporarily unavailable" in english.message  # type: ignore[attr-defined]
    unsupported = decode_details(await exhausted("fr-FR"))["LocalizedMessage"]
    assert unsupported.locale == "en"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("header", "locale"),
    [
        ("ko", "ko"),
        ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", "ko"),
        ("en-US,en;q=0.9,ko;q=0.8", "en"),
        ("fr;q=1.0, ko;q=0.5", "ko"),
        ("de", "en"),
        ("", "en"),
        ("ko;q=bogus", "en"),
    ],
)
def test_accept_language_picks_the_best_supported_locale(header: str, locale: str) -> None:
    assert locale_from(header) == locale
