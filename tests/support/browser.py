"""A real headless Chromium (Debian's package) driven by Playwright, cut off from every host but
the app under test."""

import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image
from playwright.async_api import Page, Request, Response, Route, async_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)


@dataclass
class OfflinePage:
    """A browser page that reaches nothing but the app: `blocked` lists the requests for other
    hosts (aborted), `failed` the app's answers of 400 and above as (status, method, url)."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def count(self, method: str, path_part: str) -> int:
        """How many requests of `method` had `path_part` in their URL so far."""
        return sum(1 for m, url in self.requests if m == method and path_part in url)


@asynccontextmanager
async def offline_page(base_url: str) -> AsyncIterator[OfflinePage]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = await browser.new_context(viewport={"width": 1100, "height": 1400})
        page = await context.new_page()
        offline = OfflinePage(page)

        async def only_the_app(route: Route) -> None:
            if route.request.url.startswith(base_url):
                await route.continue_()
            else:
                offline.blocked.append(route.request.url)
                await route.abort("internetdisconnected")

        def record_request(request: Request) -> None:
            offline.requests.append((request.method, request.url))

        def record_failure(response: Response) -> None:
            if response.status >= 400:
                offline.failed.append((response.status, response.request.method, response.url))

        await context.route("**/*", only_the_app)
        page.on("request", record_request)
        page.on("response", record_failure)
        page.on("dialog", lambda dialog: dialog.accept())
        try:
            yield offline
        finally:
            await browser.close()


def pixels_near(png: bytes, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of a screenshot are within `tolerance` of `colour` on every channel."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)) <= tolerance).all(axis=2).sum())
