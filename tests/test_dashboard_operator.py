"""Operator actions in the dashboard, in headless Debian Chromium against a real replica:
pin a model with an expiry, see it served, roll it back from the history view, a stale
form refused with the conflict message (nothing overwritten), and a guarded rollout created,
paused, its share changed and stopped from the dashboard."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aetcd
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.etcd import read_prefix, write_changes
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import CHROMIUM, NEEDS_CHROMIUM, Running, eventually

pytestmark = NEEDS_CHROMIUM

TOKENS = ["dana:dana-secret"]


@pytest.fixture
async def page() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport={"width": 1366, "height": 900})
        new_page = await context.new_page()
        new_page.on("pageerror", lambda e: print("pageerror:", e))
        yield new_page
        await browser.close()


AUTH = [("authorization", "Bearer dana-secret")]


async def model_for(
    server: Running, context: str = "rag.answer"
) -> router_pb2.ResolveModelResponse:
    return await server.router.ResolveModel(
        router_pb2.ResolveModelRequest(context=context, user=types_pb2.User(id="u1"))
    )


async def open_dashboard(page, server: Running) -> None:
    await page.goto(f"http://127.0.0.1:{server.server.admin_port}/")
    await page.get_by_test_id("token-form").wait_for(state="visible")
    await page.fill("#token-input", "dana-secret")
    await page.click("#token-form button")
    await page.wait_for_selector("body[data-operator=ready]")


async def test_pin_with_expiry_then_roll_back_from_history(
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    page,
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    previous = (await model_for(server)).model_id
    await open_dashboard(page, server)

    await page.get_by_test_id("override-context").fill("rag.answer")
    await page.get_by_test_id("override-model").fill("gpt-4o")
    await page.get_by_test_id("override-hours").fill("2")
    await page.get_by_test_id("override-note").fill("incident 9")
    await page.get_by_test_id("override-submit").click()
    message = page.get_by_test_id("action-message")
    await eventually(lambda: _contains(message, "gpt-4o pinned for rag.answer"))

    async def pinned() -> None:
        reply = await model_for(server)
        assert (reply.model_id, reply.reason) == ("gpt-4o", 2)  # REASON_OPERATOR_OVERRIDE

    await eventually(pinned)
    _, stored = await read_prefix(etcd, prefix)
    override = json.loads(stored["overrides/rag.answer"].value)
    assert override["note"] == "incident 9" and override["expires"]  # with its expiry

    row = page.locator("[data-testid=history-row][data-key='overrides/rag.answer']")

    async def listed() -> None:
        await page.get_by_test_id("history-refresh").click()
        assert await row.count() == 1
        assert await row.get_attribute("data-actor") == "dana"

    await eventually(listed, timeout=10, interval=0.2)
    await row.get_by_test_id("history-undo").click()
    await eventually(lambda: _contains(message, "Rolled back 1 key(s)"))

    async def restored() -> None:
        assert (await model_for(server)).model_id == previous

    await eventually(restored)

    async def rollback_recorded() -> None:  # the history records after the watch delivers
        changes = await server.admin.ListConfigChanges(
            admin_pb2.ListConfigChangesRequest(key_prefix="overrides/"), metadata=AUTH
        )
        assert [(c.actor, c.HasField("value_after_json")) for c in changes.changes][:1] == [
            ("dana", False)  # the rollback deleted the override, recorded under the token's name
        ]

    await eventually(rollback_recorded)


async def test_stale_form_shows_the_conflict_and_overwrites_nothing(
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    page,
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    await open_dashboard(page, server)
    loaded = int(await page.get_by_test_id("form-revision").inner_text())
    # Someone else changes the configuration after the form was loaded.
    await write_changes(
        etcd, prefix, {"overrides/rag.answer": b'{"model": "claude-3-sonnet"}'}, 0, []
    )
    await page.get_by_test_id("override-context").fill("rag.answer")
    await page.get_by_test_id("override-model").fill("gpt-4o")
    await page.get_by_test_id("override-submit").click()
    message = page.get_by_test_id("action-message")
    await eventually(lambda: _contains(message, "the configuration changed since you loaded it"))
    assert await message.get_attribute("data-kind") == "conflict"
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["overrides/rag.answer"].value)["model"] == "claude-3-sonnet"
    # Reload, then the same action goes through.
    await page.get_by_test_id("form-reload").click()
    await eventually(lambda: _revision_above(page, loaded))
    await page.get_by_test_id("override-submit").click()
    await eventually(lambda: _contains(message, "gpt-4o pinned for rag.answer"))


ROLLOUT_CONFIG = {
    "models/base": {"provider": "p1"},
    "models/cand": {"provider": "p2"},
    "contexts/chat": {"model": "base"},
    "settings": {"default_model": "base", "rollout_check_seconds": 1},
}


async def served_in_chat(server: Running, users: range) -> dict[str, set[int]]:
    """model -> reasons, over one ResolveModel per user."""
    found: dict[str, set[int]] = {}
    for n in users:
        reply = await server.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="chat", user=types_pb2.User(id=f"user-{n}"))
        )
        found.setdefault(reply.model_id, set()).add(reply.reason)
    return found


async def test_rollout_created_paused_ramped_and_stopped_from_the_dashboard(
    start_server: Callable[..., Awaitable[Running]],
    page,
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    config = {key: json.dumps(value).encode() for key, value in ROLLOUT_CONFIG.items()}
    await write_changes(etcd, prefix, config, 0, [])  # type: ignore[arg-type]
    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    await open_dashboard(page, server)
    message = page.get_by_test_id("action-message")

    await page.get_by_test_id("rollout-id").fill("dash")
    await page.get_by_test_id("rollout-context").fill("chat")
    await page.get_by_test_id("rollout-candidate").fill("cand")
    # One step at 30% that needs more calls than the test makes: the controller holds it.
    await page.get_by_test_id("rollout-steps").fill("30:0:1000000, 100")
    await page.get_by_test_id("rollout-guardrails").fill("ERROR_RATE+0.02")
    await page.get_by_test_id("rollout-note").fill("try cand")
    await page.get_by_test_id("rollout-create").click()
    await eventually(lambda: _contains(message, "Rollout dash of cand on chat created"))

    async def candidate_for_some() -> None:
        served = await served_in_chat(server, range(200))
        assert served.get("cand") == {types_pb2.REASON_ROLLOUT}
        assert 20 < len(await _users_on(server, "cand")) < 120

    await eventually(candidate_for_some, timeout=10, interval=0.2)
    row = page.locator("[data-testid=rollout-action][data-rollout=dash]")

    async def running() -> None:
        await page.get_by_test_id("form-reload").click()
        assert await row.get_attribute("data-state") == "RUNNING"  # the controller started it

    await eventually(running, timeout=10, interval=0.3)

    await page.get_by_test_id("rollout-pause-dash").click()
    await eventually(lambda: _contains(message, "Rollout dash: pause done — PAUSED"))
    await page.get_by_test_id("rollout-percent-dash").fill("100")
    await page.get_by_test_id("rollout-percent-set-dash").click()
    await eventually(lambda: _contains(message, "percent done — PAUSED, candidate at 100%"))

    async def everyone_on_the_candidate() -> None:
        assert await served_in_chat(server, range(50)) == {"cand": {types_pb2.REASON_ROLLOUT}}

    await eventually(everyone_on_the_candidate)
    _, stored = await read_prefix(etcd, prefix)
    progress = json.loads(stored["runtime/rollouts/dash"].value)
    assert (progress["state"], progress["percent"], progress["actor"]) == ("PAUSED", 100, "dana")

    await page.get_by_test_id("rollout-stop-dash").click()
    await eventually(lambda: _contains(message, "Rollout dash: stop done — DISABLED"))

    async def never_the_candidate() -> None:
        assert set(await served_in_chat(server, range(300))) == {"base"}

    await eventually(never_the_candidate)

    async def recorded_with_the_token_name() -> None:
        actors = set()
        for key_prefix in ("rollouts/dash", "runtime/rollouts/dash"):
            reply = await server.admin.ListConfigChanges(
                admin_pb2.ListConfigChangesRequest(key_prefix=key_prefix), metadata=AUTH
            )
            actors |= {(c.key, c.actor) for c in reply.changes}
        # Created and stopped by dana; paused and ramped by dana; started by the controller.
        assert {("rollouts/dash", "dana"), ("runtime/rollouts/dash", "dana")} <= actors
        assert ("runtime/rollouts/dash", "rollout-controller") in actors

    await eventually(recorded_with_the_token_name, timeout=10, interval=0.2)


async def test_a_rollout_action_on_a_stale_form_is_refused(
    start_server: Callable[..., Awaitable[Running]],
    page,
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    config = {key: json.dumps(value).encode() for key, value in ROLLOUT_CONFIG.items()}
    rollout = {"context": "chat", "candidate": "cand", "steps": [{"percent": 20}], "enabled": True}
    config["rollouts/dash"] = json.dumps(rollout).encode()
    config["settings"] = json.dumps(
        {"default_model": "base", "rollout_check_seconds": 3600}
    ).encode()
    await write_changes(etcd, prefix, config, 0, [])  # type: ignore[arg-type]
    server = await start_server(admin_port=0, admin_tokens=TOKENS)
    await open_dashboard(page, server)
    # Someone else changes the configuration after the form was loaded.
    await write_changes(etcd, prefix, {"overrides/other": b'{"model": "base"}'}, 0, [])
    await page.get_by_test_id("rollout-stop-dash").click()
    message = page.get_by_test_id("action-message")
    await eventually(lambda: _contains(message, "the configuration changed since you loaded it"))
    assert await message.get_attribute("data-kind") == "conflict"
    _, stored = await read_prefix(etcd, prefix)
    assert json.loads(stored["rollouts/dash"].value)["enabled"] is True  # nothing written


async def _users_on(server: Running, model: str) -> list[int]:
    users = []
    for n in range(200):
        reply = await server.router.ResolveModel(
            router_pb2.ResolveModelRequest(context="chat", user=types_pb2.User(id=f"user-{n}"))
        )
        if reply.model_id == model:
            users.append(n)
    return users


async def _contains(locator, text: str) -> None:
    assert text in await locator.inner_text()


async def _revision_above(page, revision: int) -> None:
    assert int(await page.get_by_test_id("form-revision").inner_text()) > revision
