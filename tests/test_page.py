"""The web page at `/`, served by the app, and an end-to-end run in a real headless Chromium.

The browser test needs Debian's `chromium` package (`apt-get install -y chromium`); without it
the test is skipped, saying so. A screenshot of the run is kept in build/page.png."""

import shutil
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient

from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.images import encode, scene
from tests.support.keys import add_key
from tests.support.live_server import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "build" / "page.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_the_page_and_its_assets_are_served(client: AsyncClient) -> None:
    page = await client.get("/")
    script = await client.get("/static/app.js")
    style = await client.get("/static/style.css")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Image similarity</h1>" in page.text
    assert script.status_code == style.status_code == 200
    assert "http://" not in page.text + script.text  # no CDN: works offline


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)
async def test_upload_see_the_near_duplicate_and_delete_in_a_browser(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    from playwright.async_api import async_playwright

    settings, _ = await settings_on_new_database(create_database, tmp_path, "browser")
    original = scene(640, 480, seed=1)
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(original, "JPEG", quality=90))
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as api:
            edited = encode(original.resize((320, 240)), "JPEG", quality=50)
            await api.post("/api/v1/images/upload", files={"file": ("edited-copy.jpg", edited)})

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS
            )
            page = await browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("dialog", lambda dialog: dialog.accept())
            await page.goto(base_url)

            await page.set_input_files("#file-input", str(photo))
            first = page.locator("#results li").first
            await first.wait_for()
            assert "near duplicate" in await first.inner_text()
            assert "edited-copy.jpg" in await first.inner_text()
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 2")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)

            await first.get_by_role("button").click()
            await page.wait_for_selector("#details:not([hidden])")
            assert "edited-copy.jpg" in await page.inner_text("#details-title")
            await page.click("#delete-button")
            await page.wait_for_function(
                "document.getElementById('status').textContent === 'Picture deleted.'"
            )
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 1")

            await page.set_input_files("#file-input", str(not_an_image))
            await page.wait_for_selector("#status.error")
            assert "Unsupported image format" in await page.inner_text("#status")
            await browser.close()

        async with httpx.AsyncClient(base_url=base_url) as api:
            listing = (await api.get("/api/v1/images/")).json()
    assert [item["filename"] for item in listing["items"]] == ["holiday.jpg"]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)
async def test_the_page_asks_for_a_key_and_works_with_one(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    from playwright.async_api import async_playwright

    settings, url = await settings_on_new_database(
        create_database, tmp_path, "browser_keys", AUTH_REQUIRED=True
    )
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(scene(640, 480, seed=2), "JPEG", quality=90))

    with live_server(settings) as base_url:
        key = await add_key(url, "page", "write")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS
            )
            page = await browser.new_page()
            await page.goto(base_url)
            await page.wait_for_selector("#status.error")
            refused = await page.inner_text("#status")

            await page.fill("#api-key", key)
            await page.click("#key-form button")
            await page.set_input_files("#file-input", str(photo))
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 1")
            # The thumbnail was fetched with the key (an <img> alone cannot send it).
            await page.wait_for_function("document.querySelector('#gallery img').naturalWidth > 0")
            thumbnail_source = await page.get_attribute("#gallery img", "src")
            status = await page.inner_text("#status")
            await browser.close()

    assert "This request needs an API key" in refused and "see API key above" in refused
    assert thumbnail_source is not None and thumbnail_source.startswith("blob:")
    assert status == "0 similar picture(s) for holiday.jpg."
