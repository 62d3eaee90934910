"""Rollout actions over the admin HTTP API (what the dashboard's rollout forms call), against
a real replica and etcd: bad actions answer 400/404 with a human message and write nothing,
a token is required, and going to a step serves that step's share (recorded under the
token's name). The browser flow is in tests/test_dashboard_operator.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aetcd
import httpx
import pytest
from modelroute.storage.etcd import read_prefix, write_changes

from tests.helpers import Running, eventually

TOKENS = ["dana:dana-secret"]
AUTH = {"Authorization": "Bearer dana-secret"}
STEPS = [{"percent": 10, "min_calls": 10**9}, {"percent": 60, "min_calls": 10**9}, {"percent": 100}]
CONFIG = {
    "models/base": {"provider": "p1"},
    "models/cand": {"provider": "p2"},
    "contexts/chat": {"model": "base"},
    # The controller starts the rollout, then holds (step minimums never met).
    "settings": {"default_model": "base", "rollout_check_seconds": 3600},
    "rollouts/r": {"context": "chat", "candidate": "cand", "steps": STEPS, "enabled": True},
}


@pytest.fixture
async def client(
    start_server: Callable[..., Awaitable[Running]], etcd: aetcd.Client, prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    values = {key: json.dumps(value).encode() for key, value in CONFIG.items()}
    await write_changes(etcd, prefix, values, 0, [])  # type: ignore[arg-type]
    server = await start_server(admin_port=0, admin_tokens=TOKENS)

    async def started() -> None:  # so that no controller write races the test's actions
        _, stored = await read_prefix(etcd, prefix)
        assert "runtime/rollouts/r" in stored

    await eventually(started)
    base = f"http://127.0.0.1:{server.server.admin_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=AUTH) as http:
        yield http


async def act(http: httpx.AsyncClient, rollout: str, **body: object) -> httpx.Response:
    current = (await http.get("/api/admin/config/current")).json()
    return await http.post(
        f"/api/admin/rollouts/{rollout}/action",
        json={"expected_revision": current["revision"], **body},
    )


async def test_bad_actions_are_refused_and_write_nothing(
    client: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    revision_before, before = await read_prefix(etcd, prefix)
    missing = await act(client, "nope", action="pause")
    assert missing.status_code == 404 and "no rollout 'nope'" in missing.text
    for body, field in (
        ({"action": "step", "step": 3}, "step"),
        ({"action": "step"}, "step"),
        ({"action": "percent", "percent": 101}, "percent"),
        ({"action": "resume"}, "action"),  # not paused
    ):
        reply = await act(client, "r", **body)
        assert reply.status_code == 400, (body, reply.text)
        assert field in reply.text
    unknown = await act(client, "r", action="explode")
    assert unknown.status_code == 400
    anonymous = await client.post(
        "/api/admin/rollouts/r/action",
        json={"action": "stop", "expected_revision": revision_before},
        headers={"Authorization": ""},
    )
    assert anonymous.status_code == 401
    _, stored = await read_prefix(etcd, prefix)
    assert stored["runtime/rollouts/r"].value == before["runtime/rollouts/r"].value
    assert {k: v.value for k, v in stored.items() if not k.startswith("runtime/")} == {
        k: v.value for k, v in before.items() if not k.startswith("runtime/")
    }


async def test_going_to_a_step_sets_its_share_under_the_token_name(
    client: httpx.AsyncClient, etcd: aetcd.Client, prefix: str
) -> None:
    reply = await act(client, "r", action="step", step=1, note="skip ahead")
    assert reply.status_code == 200, reply.text
    assert (reply.json()["state"], reply.json()["percent"]) == ("RUNNING", 60)
    _, stored = await read_prefix(etcd, prefix)
    progress = json.loads(stored["runtime/rollouts/r"].value)
    assert (progress["step"], progress["percent"], progress["actor"]) == (1, 60, "dana")
    assert progress["decisions"][-1]["action"] == "operator step"
    assert json.loads(stored["runtime/change-meta"].value)["actor"] == "dana"
    # Paused, it does not resume by itself; resumed, it runs again at the same share.
    assert (await act(client, "r", action="pause")).json()["state"] == "PAUSED"
    assert (await act(client, "r", action="pause")).status_code == 400  # already paused
    resumed = (await act(client, "r", action="resume")).json()
    assert (resumed["state"], resumed["percent"]) == ("RUNNING", 60)
