"""The side effects of an accepted usage report (cooldown, token and budget counting, the
cooldown alert) happen exactly once, whether or not the caller waited for the answer and
however often it retries (real gRPC, a real server, a real database and etcd)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2
from modelroute.v1 import router_pb2, types_pb2
from sqlalchemy import Engine, text

from tests.helpers import Running, eventually

RAG = router_pb2.ResolveModelRequest(context="rag.answer")


@contextlib.contextmanager
def usage_table_locked(engine: Engine) -> Iterator[None]:
    """Hold a write lock on the usage table: the server's commit waits until we let go,
    so a call can be cancelled while its report is being committed."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database is not None
        writer = sqlite3.connect(database, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        return
    with engine.connect() as connection, connection.begin():
        connection.execute(text("LOCK TABLE llm_usage_logs IN EXCLUSIVE MODE"))
        yield


def rate_limited(report_id: str) -> router_pb2.UsageReport:
    retry = duration_pb2.Duration()
    retry.FromSeconds(600)
    return router_pb2.UsageReport(
        report_id=report_id,
        context="rag.answer",
        model_id="gemini-3-flash-preview",
        outcome=types_pb2.OUTCOME_RATE_LIMITED,
        input_tokens=4000,
        output_tokens=1000,
        retry_after=retry,
    )


async def test_a_report_whose_caller_gave_up_still_cools_the_model_down_once(
    server: Running,
) -> None:
    writer, quotas, engine = server.server.usage_writer, server.server.quotas, server.server.engine
    assert writer is not None and quotas is not None and engine is not None
    request = router_pb2.ReportUsageRequest(reports=[rate_limited("cancelled-429")])

    with usage_table_locked(engine):
        call = server.router.ReportUsage(request)

        async def queued_for_commit() -> None:
            assert writer.pending == 1

        await eventually(queued_for_commit)
        call.cancel()  # the caller gives up while its report is being committed
        with pytest.raises((asyncio.CancelledError, grpc.RpcError)):
            await call

    async def committed() -> None:
        assert writer.pending == 0

    await eventually(committed)
    # The caller retries (twice): the report is already stored.
    for _ in range(2):
        retry = await server.router.ReportUsage(request)
        assert retry.results[0].status == router_pb2.REPORT_STATUS_DUPLICATE

    async def cooled() -> router_pb2.ResolveModelResponse:
        response = await server.router.ResolveModel(RAG)
        assert response.model_id == "gpt-4o-mini"
        return response

    response = await eventually(cooled)
    assert response.fallback.cause == types_pb2.FALLBACK_CAUSE_COOLDOWN
    # Tokens and cost were counted once (not zero times, not once per retry).
    now = datetime.now(UTC)
    assert quotas.total("tokens_per_minute", "google", now) == 5000
    # gemini-3-flash-preview: $0.5 / Mtok in, $3 / Mtok out.
    assert quotas.total("usd_per_day", "rag.answer", now) == pytest.approx(
        (4000 * 0.5 + 1000 * 3) / 1_000_000
    )

    async def one_cooldown_alert() -> None:
        with engine.connect() as connection:
            kinds = connection.execute(text("SELECT kind FROM alerts")).scalars().all()
        assert kinds.count("cooldown_started") == 1

    await eventually(one_cooldown_alert)


async def test_a_retried_report_counts_once_when_the_caller_waited(server: Running) -> None:
    quotas = server.server.quotas
    assert quotas is not None
    request = router_pb2.ReportUsageRequest(reports=[rate_limited("waited-429")])
    first = await server.router.ReportUsage(request)
    assert first.results[0].status == router_pb2.REPORT_STATUS_ACCEPTED

    async def cooled() -> None:
        assert (await server.router.ResolveModel(RAG)).model_id == "gpt-4o-mini"

    await eventually(cooled)
    for _ in range(3):
        again = await server.router.ReportUsage(request)
        assert again.results[0].status == router_pb2.REPORT_STATUS_DUPLICATE
    assert quotas.total("tokens_per_minute", "google", datetime.now(UTC)) == 5000
