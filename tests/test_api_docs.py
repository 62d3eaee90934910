"""`/docs` (Swagger UI) and `/redoc` work offline: every asset comes from the replica
itself, none from a CDN (a real replica's admin HTTP server; Chromium with the network
outside loopback blocked)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.helpers import Running

CHROMIUM = os.environ.get("MODELROUTE_CHROMIUM", "/usr/bin/chromium")
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.fixture
async def http_server(seed: int, start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server(admin_port=0)


@pytest.fixture
async def client(http_server: Running) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{http_server.server.admin_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield http


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_api_doc_pages_load_every_asset_from_the_replica(
    client: httpx.AsyncClient, page: str
) -> None:
    reply = await client.get(page)
    assert reply.status_code == 200
    assets = [a or b for a, b in ASSET.findall(reply.text)]
    assert any(a.endswith(".js") for a in assets), reply.text
    for asset in assets:
        assert not urlsplit(asset).netloc, f"{page} loads {asset} from another host"
        loaded = await client.get(urljoin(page, asset))
        assert loaded.status_code == 200, asset
        assert loaded.content, asset


@pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)),
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MODELROUTE_CHROMIUM)",
)
async def test_swagger_ui_renders_the_api_with_no_network_beyond_the_replica(
    http_server: Running,
) -> None:
    from playwright.async_api import Route, async_playwright

    base = f"http://127.0.0.1:{http_server.server.admin_port}"
    blocked: list[str] = []

    async def offline(route: Route) -> None:
        if route.request.url.startswith(base):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.route("**/*", offline)
            await page.goto(f"{base}/docs")
            title = page.locator(".swagger-ui .info .title")
            await title.wait_for(timeout=30_000)
            assert "modelroute admin API" in await title.inner_text()
            # An operation of the API is listed (the OpenAPI 3.1 document was understood).
            await page.locator(".opblock-summary-path").first.wait_for(timeout=30_000)
        finally:
            await browser.close()
    assert blocked == []
