"""Guarded progressive rollouts end to end: real etcd, real database, real replicas.

A bad candidate is rolled back by the controller before its next step (and never served
again), a healthy one ramps to 100%, and the controller survives the death of its replica.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aetcd
import grpc
import pytest
from modelroute.admin.v1 import admin_pb2, admin_pb2_grpc
from modelroute.server.usage.rollout_controller import LEADER_KEY
from modelroute.storage.etcd import read_prefix, write_changes
from modelroute.v1 import router_pb2, router_pb2_grpc, types_pb2

from tests.helpers import Running, ServerProcess, WebhookReceiver, eventually, run_cli

SETTINGS: dict[str, object] = {"default_model": "base", "rollout_check_seconds": 1}
CONFIG: dict[str, object] = {
    "models/base": {"provider": "p1", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
    "models/cand": {"provider": "p2", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
    "contexts/chat": {"model": "base"},
    "settings": SETTINGS,
}
ERROR_GUARDRAIL = {"metric": "ERROR_RATE", "max_increase": 0.02}


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


async def put(etcd: aetcd.Client, prefix: str, values: dict[str, object]) -> int:
    changes = {key: json.dumps(value).encode() for key, value in values.items()}
    return await write_changes(etcd, prefix, changes, 0, [])  # type: ignore[arg-type]


class Traffic:
    """Resolves for fresh users and reports each call, with an error rate per model."""

    def __init__(self, router: router_pb2_grpc.ModelRouterServiceStub, seed: int) -> None:
        self.router = router
        self.rng = random.Random(seed)
        self.served: Counter[str] = Counter()
        self.calls = 0

    async def run(self, calls: int, error_rates: dict[str, float]) -> Counter[str]:
        served: Counter[str] = Counter()
        reports = []
        for _ in range(calls):
            self.calls += 1
            user = types_pb2.User(id=f"user-{self.calls}-{self.rng.random():.6f}")
            decision = await self.router.ResolveModel(
                router_pb2.ResolveModelRequest(context="chat", user=user)
            )
            served[decision.model_id] += 1
            failed = self.rng.random() < error_rates[decision.model_id]
            reports.append(
                router_pb2.UsageReport(
                    report_id=f"r-{self.calls}-{self.rng.random()}",
                    decision_id=decision.decision_id,
                    context="chat",
                    model_id=decision.model_id,
                    outcome=types_pb2.OUTCOME_SERVER_ERROR if failed else types_pb2.OUTCOME_OK,
                    input_tokens=100,
                    output_tokens=50,
                    latency_ms=200 + self.rng.randrange(50),
                    user=user,
                )
            )
            if len(reports) == 50:
                await self.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
                reports = []
        if reports:
            await self.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
        self.served.update(served)
        return served


async def status_of(
    admin: admin_pb2_grpc.AdminServiceStub, rollout_id: str
) -> admin_pb2.RolloutStatus:
    reply = await admin.GetRolloutStatus(admin_pb2.GetRolloutStatusRequest(rollout_id=rollout_id))
    return reply.rollouts[0]


async def test_candidate_with_ten_points_more_errors_is_rolled_back_before_its_next_step(
    etcd: aetcd.Client,
    prefix: str,
    start_server: Callable[..., Awaitable[Running]],
    webhook: WebhookReceiver,
) -> None:
    settings = {**SETTINGS, "alert_webhook_url": webhook.url}
    await put(etcd, prefix, {**CONFIG, "settings": settings})
    replica_a, replica_b = await start_server(), await start_server()
    await put(
        etcd,
        prefix,
        {
            "rollouts/bad": {
                "context": "chat",
                "candidate": "cand",
                # The first step lasts an hour: only a breach can end it in this test.
                "steps": [{"percent": 30, "min_seconds": 3600}, {"percent": 100}],
                "guardrails": [ERROR_GUARDRAIL],
                "on_breach": "ROLLBACK",
                "enabled": True,
            }
        },
    )
    status = await eventually(lambda: _state_is(replica_b, "bad", "RUNNING"), timeout=10)
    assert (status.percent, status.step) == (30, 0)

    traffic = Traffic(replica_b.router, seed=1)
    rates = {"base": 0.02, "cand": 0.12}  # the candidate fails 10 points more often

    async def rolled_back() -> admin_pb2.RolloutStatus:
        await traffic.run(100, rates)
        return await _state_is(replica_a, "bad", "ROLLED_BACK")

    status = await eventually(rolled_back, timeout=60, interval=0.05)
    assert traffic.served["cand"] > 0  # it did serve before the rollback
    assert status.percent == 0 and status.step == 0  # never reached the next step
    assert [d.action for d in status.decisions] == ["started", "rolled_back"]
    breached = [g for g in status.guardrails if g.breached]
    assert [g.metric for g in breached] == ["ERROR_RATE"] and breached[0].interval_low > 0
    assert "ERROR_RATE" in status.decisions[-1].detail
    # The controller's write says who made it, for the config history.
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["runtime/rollouts/bad"].value)["actor"] == "rollout-controller"
    # ... and the config history records the rollback once, by `rollout-controller`.
    history = await eventually(lambda: _controller_history(replica_a, "bad"), timeout=10)
    assert [json.loads(c.value_after_json)["state"] for c in history] == ["RUNNING", "ROLLED_BACK"]

    # Every replica serves the baseline only, from now on.
    for replica in (replica_a, replica_b):
        await eventually(lambda r=replica: _serves_only_baseline(r), timeout=5)  # type: ignore[misc]
    served = await Traffic(replica_a.router, seed=2).run(300, rates)
    assert served == Counter({"base": 300})

    alerts = await replica_a.admin.ListAlerts(admin_pb2.ListAlertsRequest())
    kinds = [a.kind for a in alerts.alerts]
    assert kinds.count("rollout_rolled_back") == 1
    await eventually(lambda: _webhook_has(webhook, "rollout_rolled_back"), timeout=10)
    # The controller keeps checking, but a rolled-back rollout is left alone: one POST.
    checks = replica_a.server.rollout_controller.checks + (  # type: ignore[union-attr]
        replica_b.server.rollout_controller.checks  # type: ignore[union-attr]
    )
    await eventually(
        lambda: _checked_more_than(replica_a, replica_b, checks + 2), timeout=10, interval=0.1
    )
    assert webhook.kinds()["rollout_rolled_back"] == 1


async def _controller_history(replica: Running, rollout_id: str) -> list[admin_pb2.ConfigChange]:
    reply = await replica.admin.ListConfigChanges(
        admin_pb2.ListConfigChangesRequest(key_prefix=f"runtime/rollouts/{rollout_id}")
    )
    changes = list(reversed(reply.changes))  # oldest first
    assert len(changes) == 2, changes
    assert {c.actor for c in changes} == {"rollout-controller"}
    return changes


async def _state_is(replica: Running, rollout_id: str, state: str) -> admin_pb2.RolloutStatus:
    status = await status_of(replica.admin, rollout_id)
    assert status.state == state, (status.state, status.percent)
    return status


async def _serves_only_baseline(replica: Running) -> None:
    for index in range(200):
        decision = await replica.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="chat", user=types_pb2.User(id=f"late-{index}"))
        )
        assert decision.model_id == "base", decision


def _webhook_has(webhook: WebhookReceiver, kind: str) -> None:
    assert webhook.kinds()[kind] >= 1, webhook.received


def _checked_more_than(a: Running, b: Running, checks: int) -> None:
    total = a.server.rollout_controller.checks + b.server.rollout_controller.checks  # type: ignore[union-attr]
    assert total > checks


async def test_healthy_candidate_ramps_to_100_percent_and_is_promoted(
    etcd: aetcd.Client,
    etcd_endpoint: str,
    prefix: str,
    start_server: Callable[..., Awaitable[Running]],
) -> None:
    await put(etcd, prefix, CONFIG)
    replica = await start_server()
    await put(
        etcd,
        prefix,
        {
            "rollouts/good": {
                "context": "chat",
                "candidate": "cand",
                "steps": [
                    {"percent": 10, "min_calls": 20},
                    {"percent": 50, "min_calls": 20},
                    {"percent": 100, "min_calls": 20},
                ],
                "guardrails": [
                    ERROR_GUARDRAIL,
                    {"metric": "P95_LATENCY_MS", "max_relative_increase": 0.5},
                    {"metric": "COST_PER_CALL", "max_relative_increase": 0.5},
                ],
                "enabled": True,
            }
        },
    )
    traffic = Traffic(replica.router, seed=3)
    rates = {"base": 0.02, "cand": 0.02}
    seen_percents: set[int] = set()

    async def completed() -> admin_pb2.RolloutStatus:
        await traffic.run(60, rates)
        status = await status_of(replica.admin, "good")
        seen_percents.add(status.percent)
        assert status.state == "COMPLETED", (status.state, status.percent)
        return status

    status = await eventually(completed, timeout=90, interval=0.05)
    assert status.percent == 100 and not any(g.breached for g in status.guardrails)
    assert [d.action for d in status.decisions] == ["started", "advanced", "advanced", "completed"]
    assert [d.percent for d in status.decisions] == [10, 50, 100, 100]
    assert status.candidate_calls > 0 and status.baseline_calls > 0
    served = await Traffic(replica.router, seed=4).run(100, rates)
    assert served == Counter({"cand": 100})
    alerts = await replica.admin.ListAlerts(admin_pb2.ListAlertsRequest())
    completed_alerts = [a for a in alerts.alerts if a.kind == "rollout_completed"]
    assert len(completed_alerts) == 1
    assert "modelroute rollout promote good" in completed_alerts[0].message

    shown = await run_cli(
        "rollout", "status", "good", "--server", replica.address, etcd=etcd_endpoint, prefix=prefix
    )
    assert shown.returncode == 0, shown.stderr
    assert "COMPLETED, step 3/3, candidate share 100%" in shown.stdout
    assert "ERROR_RATE max_increase=0.02" in shown.stdout and "always-valid" in shown.stdout
    # One command makes the candidate the context's model and retires the rollout.
    promoted = await run_cli(
        "rollout", "promote", "good", "--server", replica.address, etcd=etcd_endpoint, prefix=prefix
    )
    assert promoted.returncode == 0, promoted.stderr

    async def promoted_served() -> None:
        decision = await replica.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="chat", user=types_pb2.User(id="after"))
        )
        assert (decision.model_id, decision.reason) == ("cand", types_pb2.REASON_CONTEXT_DEFAULT)
        assert decision.fallback_model_ids == ["base"]

    await eventually(promoted_served)
    _, stored = await read_prefix(etcd, prefix)
    assert "rollouts/good" not in stored


async def test_promote_refuses_a_rollout_that_has_not_finished(
    etcd: aetcd.Client, etcd_endpoint: str, prefix: str
) -> None:
    rollout = {"context": "chat", "candidate": "cand", "steps": [{"percent": 5}], "enabled": True}
    await put(etcd, prefix, {**CONFIG, "rollouts/early": rollout})
    refused = await run_cli("rollout", "promote", "early", etcd=etcd_endpoint, prefix=prefix)
    assert refused.returncode == 1
    assert "PENDING, not COMPLETED" in refused.stderr
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["contexts/chat"].value)["model"] == "base"  # nothing written


@pytest.mark.slow
async def test_killing_the_controllers_replica_lets_another_continue(
    etcd: aetcd.Client, etcd_endpoint: str, prefix: str, tmp_path: Path, database_url: str
) -> None:
    await put(etcd, prefix, CONFIG)

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

    replicas = [start(0), start(1)]
    try:
        await put(
            etcd,
            prefix,
            {
                "rollouts/ha": {
                    "context": "chat",
                    "candidate": "cand",
                    "steps": [
                        {"percent": 10, "min_calls": 10},
                        {"percent": 50, "min_calls": 10},
                        {"percent": 100, "min_calls": 10},
                    ],
                    "guardrails": [ERROR_GUARDRAIL],
                    "enabled": True,
                }
            },
        )
        leader_key = f"{prefix}{LEADER_KEY}".encode()

        async def leader_pid() -> int:
            stored = await etcd.get(leader_key)
            assert stored is not None
            return int(stored.value.decode().rsplit("-", 2)[-2])  # host-pid-suffix

        first_leader = await eventually(leader_pid, timeout=15)
        by_pid = {r.process.pid: r for r in replicas}
        assert first_leader in by_pid
        survivor = next(r for r in replicas if r.process.pid != first_leader)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{survivor.port}")
        router = router_pb2_grpc.ModelRouterServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            await eventually(lambda: _status_state(admin, "RUNNING"), timeout=10)
            os.kill(first_leader, signal.SIGKILL)  # no graceful step-down: the lease must expire
            by_pid[first_leader].process.wait(10)

            async def taken_over() -> None:
                assert await leader_pid() == survivor.process.pid

            await eventually(taken_over, timeout=15, interval=0.1)
            traffic = Traffic(router, seed=5)

            async def completed() -> admin_pb2.RolloutStatus:
                await traffic.run(40, {"base": 0.0, "cand": 0.0})
                return await _status_state(admin, "COMPLETED")

            status = await eventually(completed, timeout=60, interval=0.05)
            assert [d.percent for d in status.decisions] == [10, 50, 100, 100]
        finally:
            await channel.close()
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.stop()


async def _status_state(
    admin: admin_pb2_grpc.AdminServiceStub, state: str
) -> admin_pb2.RolloutStatus:
    status = await status_of(admin, "ha")
    assert status.state == state, (status.state, status.percent)
    return status


async def test_status_of_an_unknown_rollout_is_not_found_naming_the_known_ones(
    etcd: aetcd.Client, prefix: str, start_server: Callable[..., Awaitable[Running]]
) -> None:
    rollout = {"context": "chat", "candidate": "cand", "steps": [{"percent": 5}], "enabled": True}
    await put(etcd, prefix, {**CONFIG, "rollouts/known": rollout})
    replica = await start_server()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await status_of(replica.admin, "nope")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no rollout 'nope'" in str(failure.value.details())
    assert "known" in str(failure.value.details())
