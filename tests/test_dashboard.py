"""The dashboard in headless Debian Chromium (Playwright, no browser download) against a
replica with real usage: the numbers an operator reads match what was reported.

`MODELROUTE_SCREENSHOTS=1` also writes docs/screenshots/*.png."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aetcd
import pytest
from modelroute.admin.v1 import admin_pb2
from modelroute.storage.etcd import write_changes
from modelroute.v1 import router_pb2

from tests.helpers import (
    CHROMIUM,
    NEEDS_CHROMIUM,
    Running,
    eventually,
    seed_experiment_traffic,
    usage,
)

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
async def page() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport={"width": 1366, "height": 768})
        yield await context.new_page()
        await browser.close()


@pytest.fixture
async def seeded(
    seed: int, start_server: Callable[..., Awaitable[Running]], etcd: aetcd.Client, prefix: str
) -> Running:
    """Usage on two models, an experiment with a significant difference, a rejected key."""
    server = await start_server(admin_port=0)
    reports = [usage(f"u{i}") for i in range(60)] + [
        usage(f"m{i}", model="gpt-4o-mini", context="reranker") for i in range(40)
    ]
    await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=reports))
    await seed_experiment_traffic(server, etcd, prefix)
    await write_changes(etcd, prefix, {"models/broken": b'{"provider": 42'}, 0, [])
    return server


async def text_of(page, testid: str) -> str:
    return (await page.get_by_test_id(testid).first.inner_text()).strip()


async def test_dashboard_shows_seeded_usage_experiment_rejection_and_alert(
    seeded: Running, page, prefix: str
) -> None:
    summary = await seeded.admin.GetUsageSummary(admin_pb2.GetUsageSummaryRequest())
    expected_cost = sum(r.cost_usd for r in summary.rows)
    expected_calls = sum(r.calls for r in summary.rows)
    await page.goto(f"http://127.0.0.1:{seeded.server.admin_port}/")

    async def loaded() -> None:
        # Totals shown next to the charts are the reported ones.
        calls = await page.get_by_test_id("total-calls").get_attribute("data-value")
        assert int(calls) == expected_calls == 500
        cost = float(await page.get_by_test_id("total-cost").get_attribute("data-value"))
        assert cost == pytest.approx(expected_cost, abs=1e-5)
        assert await page.get_by_test_id("rejected-key").count() == 1

    # The page refreshes every 10 s; reload instead of waiting for the timer.
    async def reload_until_loaded() -> None:
        await page.reload()
        await page.wait_for_selector("body[data-loaded=true]")
        await loaded()

    await eventually(reload_until_loaded, timeout=20, interval=0.2)
    assert (await text_of(page, "total-cost")).startswith("$")
    assert await page.get_by_test_id("usage-empty").is_hidden()
    # A chart was drawn (Chart.js sized the canvas) for the cost per day.
    assert await page.evaluate("() => !!Chart.getChart('cost-chart')")
    flash = page.get_by_test_id("model-row-gemini-3-flash-preview")
    assert int(await flash.get_attribute("data-calls")) == next(
        r.calls for r in summary.rows if r.key == "gemini-3-flash-preview"
    )

    marker = page.get_by_test_id("significant-cheap-mini")
    assert await marker.is_visible()
    assert "significant" in await marker.inner_text()
    assert await page.get_by_test_id("significant-cheap-control").count() == 0

    rejected = page.get_by_test_id("rejected-key")
    assert await rejected.get_attribute("data-key") == prefix + "models/broken"
    alert = page.locator("[data-testid=alert][data-kind=config_rejected]")
    assert await alert.count() >= 1
    assert "models/broken" in await alert.first.inner_text()
    assert await page.get_by_test_id("budget-rag.answer").is_visible()
    if os.environ.get("MODELROUTE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))
        await page.screenshot(path=str(SCREENSHOTS / "dashboard-full.png"), full_page=True)


async def test_empty_server_tells_a_new_user_what_to_do(
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    page,
    etcd: aetcd.Client,
    prefix: str,
) -> None:
    # No experiment at all (the seed config has a disabled one).
    await write_changes(etcd, prefix, {"experiments/rag-answer-q4": None}, 0, [])
    server = await start_server(admin_port=0)
    await page.goto(f"http://127.0.0.1:{server.server.admin_port}/")
    await page.wait_for_selector("body[data-loaded=true]")
    assert "ReportUsage" in await text_of(page, "usage-empty")
    assert "No experiments configured" in await text_of(page, "experiments-empty")
    assert await page.get_by_test_id("total-calls").get_attribute("data-value") == "0"


async def test_token_form_when_the_api_requires_a_token(
    seed: int, start_server: Callable[..., Awaitable[Running]], page
) -> None:
    server = await start_server(admin_port=0, admin_verify_token=lambda t: t == "letmein")
    await page.goto(f"http://127.0.0.1:{server.server.admin_port}/")
    form = page.get_by_test_id("token-form")
    await form.wait_for(state="visible")
    await page.fill("#token-input", "letmein")
    await page.click("#token-form button")
    await page.wait_for_selector("body[data-loaded=true]")
    assert await form.is_hidden()
    assert (await page.get_by_test_id("revision").inner_text()).isdigit()
    assert await page.evaluate("() => sessionStorage.getItem('modelroute.adminToken')") == "letmein"


async def test_rollout_panel_shows_share_guardrails_and_decisions(
    seed: int,
    start_server: Callable[..., Awaitable[Running]],
    etcd: aetcd.Client,
    prefix: str,
    page,
) -> None:
    server = await start_server(admin_port=0)
    rollout = {
        "context": "rag.answer",
        "candidate": "gpt-4o-mini",
        "steps": [{"percent": 5, "min_seconds": 3600}, {"percent": 100}],
        "guardrails": [{"metric": "ERROR_RATE", "max_increase": 0.02}],
        "enabled": True,
    }
    await write_changes(etcd, prefix, {"rollouts/mini": json.dumps(rollout).encode()}, 0, [])
    # The controller (this replica leads) starts it at once, not at its next interval.
    await eventually(lambda: _rollout_state(server, "RUNNING"), timeout=90, interval=0.2)
    await page.goto(f"http://127.0.0.1:{server.server.admin_port}/")

    async def shown() -> None:
        await page.reload()
        await page.wait_for_selector("body[data-loaded=true]")
        state = page.get_by_test_id("rollout-state-mini")
        assert (await state.inner_text()).strip() == "RUNNING"
        share = page.get_by_test_id("rollout-share-mini")
        assert await share.get_attribute("data-percent") == "5"
        guardrail = page.get_by_test_id("guardrail-mini-ERROR_RATE")
        assert await guardrail.get_attribute("data-breached") == "false"
        actions = page.get_by_test_id("rollout-decision")
        assert await actions.first.get_attribute("data-action") == "started"

    await eventually(shown, timeout=20, interval=0.2)


async def _rollout_state(server: Running, state: str) -> None:
    reply = await server.admin.GetRolloutStatus(admin_pb2.GetRolloutStatusRequest())
    assert [r.state for r in reply.rollouts] == [state]
