"""Usage summaries and experiment analysis on the real database (SQLite, or PostgreSQL
with MODELROUTE_TEST_DATABASE_URL), through the real AdminService and CLI."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.database import create_engine_for
from modelroute.storage.etcd import write_changes
from modelroute.storage.preference_store import FeedbackRecord, FeedbackStore
from modelroute.storage.rollups import LATENCY_RELATIVE_ERROR
from modelroute.storage.usage_store import UsageRecord, UsageStore

from tests.helpers import Running, eventually, run_cli

DAY1 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def record(
    n: int,
    *,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    context: str = "rag.answer",
    outcome: str = "OK",
    latency: int = 100,
    cost: float = 0.001,
    at: datetime = DAY1,
    experiment: str | None = None,
    variant: str | None = None,
    user: str | None = None,
    tokens: tuple[int, int] = (10, 5),
) -> UsageRecord:
    return UsageRecord(
        report_id=f"r{n}",
        decision_id=None,
        context=context,
        model_id=model,
        provider=provider,
        outcome=outcome,
        user_id=user,
        tier=None,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        latency_ms=latency,
        estimated_cost=cost,
        error_message=None,
        retry_after_ms=None,
        experiment_id=experiment,
        variant_id=variant,
        reason=None,
        config_revision=1,
        trace_id=None,
        created_at=at,
    )


def insert(database_url: str, records: list[UsageRecord]) -> None:
    engine = create_engine_for(database_url)
    store = UsageStore(engine)
    for start in range(0, len(records), 1000):
        store.insert_batch(records[start : start + 1000])
    engine.dispose()


def nearest_rank(values: list[int], q: int) -> float:
    ordered = sorted(values)
    return float(ordered[math.ceil(q * len(ordered) / 100) - 1])


async def test_usage_summary_groups_filters_and_percentiles(
    server: Running, database_url: str
) -> None:
    rng = random.Random(7)
    latencies = {"gpt-4o-mini": [rng.randint(50, 900) for _ in range(301)], "gpt-4o": [40, 60]}
    records: list[UsageRecord] = []
    for model, values in latencies.items():
        for i, latency in enumerate(values):
            records.append(
                record(
                    len(records),
                    model=model,
                    latency=latency,
                    outcome="TIMEOUT" if i % 10 == 0 else "OK",
                    at=DAY1 if i % 2 else DAY2,
                    context="reranker" if model == "gpt-4o" else "rag.answer",
                )
            )
    insert(database_url, records)

    reply = await server.admin.GetUsageSummary(
        admin_pb2.GetUsageSummaryRequest(group_by=admin_pb2.USAGE_GROUP_BY_MODEL)
    )
    rows = {r.key: r for r in reply.rows}
    assert list(rows) == ["gpt-4o", "gpt-4o-mini"]  # sorted by key
    mini, values = rows["gpt-4o-mini"], latencies["gpt-4o-mini"]
    assert (mini.calls, mini.errors) == (301, 31)
    assert dict(mini.calls_by_outcome) == {"OK": 270, "TIMEOUT": 31}
    assert (mini.input_tokens, mini.output_tokens) == (3010, 1505)
    assert mini.cost_usd == pytest.approx(0.301)
    assert mini.cost_per_call_usd == pytest.approx(0.001)
    assert mini.error_rate == pytest.approx(31 / 301)
    # Percentiles come from the rollups' latency histogram: within its stated error.
    for q, field in ((50, "latency_p50_ms"), (95, "latency_p95_ms"), (99, "latency_p99_ms")):
        exact = nearest_rank(values, q)
        assert abs(getattr(mini, field) - exact) <= LATENCY_RELATIVE_ERROR * exact, q
    assert mini.latency_mean_ms == pytest.approx(sum(values) / len(values))

    # Long calls too: within the histogram's relative error, whatever the magnitude.
    slow = [
        record(1000 + i, model="claude-3-sonnet", provider="anthropic", latency=v)
        for i, v in enumerate([1234, 56789, 123456])
    ]
    insert(database_url, slow)
    reply = await server.admin.GetUsageSummary(
        admin_pb2.GetUsageSummaryRequest(group_by=admin_pb2.USAGE_GROUP_BY_MODEL)
    )
    claude = next(r for r in reply.rows if r.key == "claude-3-sonnet")
    assert claude.latency_p50_ms == pytest.approx(56789, rel=LATENCY_RELATIVE_ERROR)
    assert claude.latency_p99_ms == pytest.approx(123456, rel=LATENCY_RELATIVE_ERROR)
    assert claude.latency_mean_ms == pytest.approx((1234 + 56789 + 123456) / 3)  # exact

    by_day = await server.admin.GetUsageSummary(
        admin_pb2.GetUsageSummaryRequest(group_by=admin_pb2.USAGE_GROUP_BY_DAY)
    )
    assert [(r.key, r.calls) for r in by_day.rows] == [("2026-11-20", 154), ("2026-11-21", 152)]

    ranged = admin_pb2.GetUsageSummaryRequest(group_by=admin_pb2.USAGE_GROUP_BY_CONTEXT)
    ranged.from_time.FromDatetime(DAY2 - timedelta(hours=1))
    ranged.to_time.FromDatetime(DAY2 + timedelta(hours=1))
    by_context = await server.admin.GetUsageSummary(ranged)
    assert [(r.key, r.calls) for r in by_context.rows] == [("rag.answer", 151), ("reranker", 1)]

    by_provider = await server.admin.GetUsageSummary(
        admin_pb2.GetUsageSummaryRequest(group_by=admin_pb2.USAGE_GROUP_BY_PROVIDER)
    )
    assert [(r.key, r.calls) for r in by_provider.rows] == [("anthropic", 3), ("openai", 303)]

    # The CLI table shows the same numbers.
    shown = await run_cli("usage", "--by", "model", "--server", server.address, etcd="", prefix="")
    assert shown.returncode == 0, shown.stderr
    (line,) = [line.split() for line in shown.stdout.splitlines() if line.startswith("gpt-4o-mini")]
    assert line[1:4] == ["301", "31", f"{100 * 31 / 301:.2f}"]
    assert line[-3:] == [
        f"{getattr(mini, f):.0f}" for f in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
    ]

    empty = admin_pb2.GetUsageSummaryRequest()
    empty.from_time.FromDatetime(DAY2)
    empty.to_time.FromDatetime(DAY1)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await server.admin.GetUsageSummary(empty)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def experiment_value(weights: tuple[int, int], models: tuple[str, str]) -> bytes:
    return json.dumps(
        {
            "context": "rag.answer",
            "enabled": True,
            "bucket_by": "USER",
            "variants": [
                {"id": "a", "model": models[0], "weight": weights[0]},
                {"id": "b", "model": models[1], "weight": weights[1]},
            ],
        }
    ).encode()


def experiment_calls(
    experiment: str, counts: dict[str, int], error_rates: dict[str, float], seed: int, offset: int
) -> list[UsageRecord]:
    rng = random.Random(seed)
    out: list[UsageRecord] = []
    for variant, n in counts.items():
        for i in range(n):
            failed = rng.random() < error_rates[variant]
            out.append(
                record(
                    offset + len(out),
                    experiment=experiment,
                    variant=variant,
                    user=f"{experiment}-{variant}-{i}",
                    outcome="SERVER_ERROR" if failed else "OK",
                    latency=int(rng.gauss(400, 80)),
                    model="gemini-3-flash-preview" if variant == "a" else "gpt-4o-mini",
                )
            )
    return out


@pytest.fixture
async def experiments(
    server: Running, etcd: aetcd.Client, prefix: str, database_url: str
) -> Running:
    revision = await write_changes(
        etcd,
        prefix,
        {
            "experiments/ab": experiment_value((50, 50), ("gemini-3-flash-preview", "gpt-4o-mini")),
            "experiments/aa": experiment_value((50, 50), ("gpt-4o-mini", "gpt-4o-mini")),
            "experiments/srm": experiment_value(
                (70, 30), ("gemini-3-flash-preview", "gpt-4o-mini")
            ),
        },
        0,
        [],
    )

    async def loaded() -> None:
        current = server.server.config.current
        assert current is not None and current.revision >= revision

    await eventually(loaded)
    rows = experiment_calls("ab", {"a": 10_000, "b": 10_000}, {"a": 0.05, "b": 0.10}, 1, 0)
    rows += experiment_calls("aa", {"a": 10_000, "b": 10_000}, {"a": 0.05, "b": 0.05}, 2, 100_000)
    rows += experiment_calls("srm", {"a": 5_000, "b": 5_000}, {"a": 0.05, "b": 0.05}, 3, 200_000)
    insert(database_url, rows)
    engine = create_engine_for(database_url)
    feedback = FeedbackStore(engine)
    rng = random.Random(4)
    for variant, mean in (("a", 0.70), ("b", 0.60)):
        for i in range(200):
            feedback.insert(
                FeedbackRecord(
                    decision_id=f"d-{variant}-{i}",
                    thumbs="UP" if i % 4 else "DOWN",
                    quality_score=min(1.0, max(0.0, rng.gauss(mean, 0.1))),
                    source="REVIEWER",
                    comment=None,
                    experiment_id="ab",
                    variant_id=variant,
                    model_id="m",
                    context="rag.answer",
                    created_at=DAY1,
                )
            )
    engine.dispose()
    return server


async def results(server: Running, experiment: str) -> admin_pb2.GetExperimentResultsResponse:
    return await server.admin.GetExperimentResults(
        admin_pb2.GetExperimentResultsRequest(experiment_id=experiment)
    )


async def test_a_five_point_error_difference_is_significant(experiments: Running) -> None:
    reply = await results(experiments, "ab")
    control, treatment = reply.variants
    assert (control.variant_id, treatment.variant_id) == ("a", "b")
    assert (control.usage.calls, treatment.usage.calls) == (10_000, 10_000)
    assert treatment.error_rate_effect == pytest.approx(0.05, abs=0.01)
    assert treatment.error_rate_p_value < 1e-6
    assert treatment.significant
    # The always-valid test agrees on a difference this large, with an interval around it.
    assert treatment.significant_sequential and treatment.error_rate_sequential_p_value < 0.01
    assert treatment.error_rate_sequential_p_value >= treatment.error_rate_p_value
    assert (
        0
        < treatment.error_rate_effect_cs_low
        < treatment.error_rate_effect
        < treatment.error_rate_effect_cs_high
    )
    assert treatment.quality_effect_cs_high < 0  # quality is lower, sequentially too
    assert control.error_rate_sequential_p_value == 1.0 and not control.significant_sequential
    assert not reply.sample_ratio_mismatch and reply.bucket_by == "USER"
    assert (control.assignments, treatment.assignments) == (10_000, 10_000)
    # Reviewer quality: seeded means 0.70 vs 0.60, 200 scores each.
    assert control.mean_quality_score == pytest.approx(0.70, abs=0.02)
    assert control.quality_ci_low < control.mean_quality_score < control.quality_ci_high
    assert control.quality_ci_high - control.quality_ci_low < 0.04
    assert treatment.quality_effect == pytest.approx(-0.10, abs=0.03)
    assert treatment.quality_p_value < 1e-6
    assert control.thumbs_up_rate == pytest.approx(0.75) and treatment.thumbs == 200


async def test_an_a_a_experiment_is_not_significant(experiments: Running) -> None:
    reply = await results(experiments, "aa")
    treatment = reply.variants[1]
    assert abs(treatment.error_rate_effect) < 0.01
    assert treatment.error_rate_p_value > 0.05 / 2 and not treatment.significant
    assert not treatment.significant_sequential
    assert treatment.error_rate_effect_cs_low < 0 < treatment.error_rate_effect_cs_high
    assert not reply.sample_ratio_mismatch


async def test_sample_ratio_mismatch_is_flagged(experiments: Running) -> None:
    reply = await results(experiments, "srm")  # configured 70/30, observed 50/50
    assert reply.sample_ratio_mismatch and reply.sample_ratio_p_value < 1e-6
    shown = await run_cli(
        "experiments", "results", "ab", "--server", experiments.address, etcd="", prefix=""
    )
    assert shown.returncode == 0, shown.stderr
    ab = await results(experiments, "ab")
    treatment = ab.variants[1]
    (line,) = [line.split() for line in shown.stdout.splitlines() if line.startswith("b ")]
    assert line[:5] == ["b", "gpt-4o-mini", "50", "10000", "10000"]
    assert line[5:7] == [
        f"{100 * treatment.error_rate:.2f}",
        f"{100 * treatment.error_rate_effect:+.2f}",
    ]
    assert line[-1] == "YES"
    srm = await run_cli(
        "experiments", "results", "srm", "--server", experiments.address, etcd="", prefix=""
    )
    assert "MISMATCH" in srm.stdout


async def test_unknown_experiment_is_not_found_with_the_known_ones(experiments: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await results(experiments, "nope")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert "known: aa, ab, rag-answer-q4, srm" in (failure.value.details() or "")
