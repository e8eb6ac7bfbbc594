"""The web page at `/` and the API documentation pages, served by the app, and end-to-end runs
in a real headless Chromium that can reach nothing but the app.

The browser tests need Debian's `chromium` package (`apt-get install -y chromium`); without it
they are skipped, saying so. A screenshot of the page is kept in build/page.png."""

from pathlib import Path

import httpx
from httpx import AsyncClient

from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.browser import needs_chromium, offline_page, pixels_near
from tests.support.images import encode, scene, text_page
from tests.support.keys import add_key
from tests.support.live_server import live_server

SCREENSHOT = Path(__file__).resolve().parents[1] / "build" / "page.png"
FOCUS_RING = (0x0B, 0x63, 0xCE)  # the outline colour of a focused card (style.css)
# ReDoc's "API docs by Redocly" logo: ReDoc hides it when it cannot be loaded.
REDOC_ATTRIBUTION_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


async def test_the_page_and_its_assets_are_served(client: AsyncClient) -> None:
    page = await client.get("/")
    script = await client.get("/static/app.js")
    style = await client.get("/static/style.css")
    icon = await client.get("/static/favicon.svg")
    fallback_icon = await client.get("/favicon.ico")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Image similarity</h1>" in page.text
    assert '<link rel="icon" href="/static/favicon.svg"' in page.text
    assert script.status_code == style.status_code == 200
    assert "http://" not in page.text + script.text  # no CDN: works offline
    assert icon.status_code == fallback_icon.status_code == 200
    assert icon.headers["content-type"] == fallback_icon.headers["content-type"] == "image/svg+xml"
    assert icon.content == fallback_icon.content and icon.content.startswith(b"<svg")


async def test_the_documentation_pages_load_their_assets_from_the_service(
    client: AsyncClient,
) -> None:
    docs = await client.get("/docs")
    redoc = await client.get("/redoc")
    assets = [await client.get(f"/docs/assets/{name}") for name in ASSETS]

    for html in (docs.text, redoc.text):
        assert "cdn.jsdelivr.net" not in html and "fonts.googleapis.com" not in html
    assert '"/docs/assets/swagger-ui-bundle.js"' in docs.text
    assert '"/docs/assets/redoc.standalone.js"' in redoc.text
    assert [response.status_code for response in assets] == [200] * len(ASSETS)
    assert all(len(response.content) > 100_000 for response in assets)


ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")


@needs_chromium
async def test_docs_render_the_operations_and_try_it_out_works_offline(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "browser_docs")

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as api:
            photo = encode(scene(seed=1), "JPEG")
            await api.post("/api/v1/images/upload", files={"file": ("holiday.jpg", photo)})

        async with offline_page(base_url) as browser:
            page = browser.page
            await page.goto(f"{base_url}/docs")
            await page.locator(".opblock").first.wait_for()
            summaries = await page.locator(".opblock-summary-description").all_inner_texts()
            listing = page.locator("#operations-images-list_images_api_v1_images__get")
            await listing.locator(".opblock-summary").click()
            await listing.get_by_role("button", name="Try it out").click()
            await listing.get_by_role("button", name="Execute").click()
            answer = listing.locator(".live-responses-table .response").first
            await answer.wait_for()
            answer_text = await answer.inner_text()
            docs_blocked = list(browser.blocked)

            await page.goto(f"{base_url}/redoc")
            await page.locator("h2", has_text="Upload an image").wait_for()
            headings = await page.locator("h2").all_inner_texts()

    assert "Upload an image" in summaries and "List images, newest first" in summaries
    assert len(summaries) >= 14
    assert answer_text.startswith("200")
    assert '"filename": "holiday.jpg"' in answer_text and '"total": 1' in answer_text
    assert docs_blocked == []  # Swagger UI asked no other host for anything
    assert "Find the stored images most similar to this one" in headings
    assert set(browser.blocked) <= {REDOC_ATTRIBUTION_LOGO}
    assert browser.failed == []


@needs_chromium
async def test_upload_see_the_near_duplicate_refine_the_search_and_delete_in_a_browser(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "browser")
    original = scene(640, 480, seed=1)
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(original, "JPEG", quality=90))
    another = tmp_path / "another.jpg"
    another.write_bytes(encode(scene(seed=3), "JPEG"))
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as api:
            edited = encode(original.resize((320, 240)), "JPEG", quality=50)
            await api.post("/api/v1/images/upload", files={"file": ("edited-copy.jpg", edited)})
            # Not another picture of shapes: the default model scores two of them about 0.67.
            unrelated = encode(text_page(1), "JPEG")
            await api.post("/api/v1/images/upload", files={"file": ("unrelated.jpg", unrelated)})

        async with offline_page(base_url) as browser:
            page = browser.page

            async def status_is(text: str) -> None:
                await page.wait_for_function(
                    "text => document.getElementById('status').textContent === text", arg=text
                )

            async def result_names() -> list[str]:
                return [
                    (await item.inner_text()).split(" · ")[-1]
                    for item in await page.locator("#results li").all()
                ]

            await page.goto(base_url)
            icon = await page.evaluate(
                "fetch(document.querySelector('link[rel=icon]').href)"
                ".then(r => [r.status, r.headers.get('content-type')])"
            )
            # The file chooser offers what this instance accepts, as /info lists it.
            await page.wait_for_function(
                "document.getElementById('file-input').accept.includes('image/heic')"
            )
            accept = await page.get_attribute("#file-input", "accept")

            await page.set_input_files("#file-input", str(photo))
            await status_is("1 similar picture(s) for holiday.jpg.")
            first = page.locator("#results li").first
            assert "near duplicate" in await first.inner_text()
            assert await result_names() == ["edited-copy.jpg"]
            # Emptied after each pick, so picking the same file again is a change too.
            assert await page.input_value("#file-input") == ""
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 3")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The slider searches again once moved: to -1 every stored picture passes.
            await page.focus("#threshold")
            await page.keyboard.press("Home")
            await status_is("2 similar picture(s) for holiday.jpg.")
            assert await result_names() == ["edited-copy.jpg", "unrelated.jpg"]
            # So does "Results".
            await page.fill("#limit", "1")
            await page.press("#limit", "Enter")
            await status_is("1 similar picture(s) for holiday.jpg.")

            # Picking the same file again searches again.
            uploads = browser.count("POST", "/upload")
            await page.evaluate("document.getElementById('status').textContent = ''")
            await page.set_input_files("#file-input", str(photo))
            await status_is("1 similar picture(s) for holiday.jpg.")
            assert browser.count("POST", "/upload") == uploads + 1

            # The keyboard focus ring of a picture card shows around the card.
            card = page.locator("#results li").first
            box = await card.bounding_box()
            assert box is not None

            async def ring_pixels() -> int:
                """Pixels of the ring's colour in and just around the card."""
                around = await page.screenshot(
                    clip={
                        "x": box["x"] - 8,
                        "y": box["y"] - 8,
                        "width": box["width"] + 16,
                        "height": box["height"] + 16,
                    }
                )
                return pixels_near(around, FOCUS_RING)

            unfocused = await ring_pixels()
            await page.focus("#limit")
            await page.keyboard.press("Tab")
            assert await page.evaluate(
                "document.activeElement === document.querySelector('#results li button')"
            )
            focused = await ring_pixels()
            # A 3-pixel ring around a card of about 150 x 190 pixels is over 1,500 pixels.
            assert focused - unfocused > 1000, (unfocused, focused)

            # With "Results" invalid, a stored upload still shows up in the gallery and says so.
            await page.fill("#limit", "0")
            await page.press("#limit", "Enter")
            await page.wait_for_selector("#status.error")
            await page.set_input_files("#file-input", str(another))
            await status_is(
                'another.jpg is stored, but the search failed: "Results" must be a whole number '
                "from 1 to 100."
            )
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 4")
            assert await page.locator("#results li").count() == 0
            await page.fill("#limit", "10")
            await page.press("#limit", "Enter")

            await page.set_input_files("#file-input", str(photo))
            await status_is("3 similar picture(s) for holiday.jpg.")
            await (
                page.locator("#results li", has_text="edited-copy.jpg")
                .get_by_role("button")
                .click()
            )
            await page.wait_for_selector("#details:not([hidden])")
            assert "edited-copy.jpg" in await page.inner_text("#details-title")
            await page.click("#delete-button")
            await status_is("Picture deleted.")
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 3")

            await page.set_input_files("#file-input", str(not_an_image))
            await page.wait_for_selector("#status.error")
            assert "Unsupported image format" in await page.inner_text("#status")

        async with httpx.AsyncClient(base_url=base_url) as api:
            listing = (await api.get("/api/v1/images/")).json()

    assert accept is not None
    assert {"image/jpeg", "image/webp", "image/avif", "image/tiff", ".heic"} <= set(
        accept.split(",")
    )
    assert icon == [200, "image/svg+xml"]
    assert browser.blocked == []
    # The only failed request is the refused file: no favicon 404, no refused search.
    assert [(status, method) for status, method, _ in browser.failed] == [(415, "POST")]
    assert sorted(item["filename"] for item in listing["items"]) == [
        "another.jpg",
        "holiday.jpg",
        "unrelated.jpg",
    ]


@needs_chromium
async def test_the_page_asks_for_a_key_and_works_with_one(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "browser_keys", AUTH_REQUIRED=True
    )
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(encode(scene(640, 480, seed=2), "JPEG", quality=90))

    with live_server(settings) as base_url:
        key = await add_key(url, "page", "write")
        async with offline_page(base_url) as browser:
            page = browser.page
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
            # The gallery can show the upload before its search has answered.
            await page.wait_for_function(
                "!document.getElementById('status').textContent.startsWith('Uploading')"
            )
            status = await page.inner_text("#status")

    assert "This request needs an API key" in refused and "see API key above" in refused
    assert thumbnail_source is not None and thumbnail_source.startswith("blob:")
    assert status == "0 similar picture(s) for holiday.jpg."


@needs_chromium
async def test_the_page_shows_copies_side_by_side_and_resolves_them(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "browser_duplicates")
    holiday, beach = scene(640, 480, seed=1), scene(640, 480, seed=4)
    pictures = {
        "holiday.jpg": encode(holiday, "JPEG", quality=90),
        "holiday-small.jpg": encode(holiday.resize((320, 240)), "JPEG", quality=60),
        "holiday-q30.jpg": encode(holiday, "JPEG", quality=30),
        "beach.jpg": encode(beach, "JPEG", quality=90),
        "beach-copy.jpg": encode(beach.resize((480, 360)), "JPEG", quality=70),
        "other.jpg": encode(scene(640, 480, seed=2), "JPEG"),
    }

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as api:
            for name, data in pictures.items():
                await api.post("/api/v1/images/upload", files={"file": (name, data)})

        async with offline_page(base_url) as browser:
            page = browser.page
            groups = page.locator("#duplicate-groups li.group")
            await page.goto(base_url)
            await page.wait_for_function(
                "document.querySelectorAll('#duplicate-groups li.group').length == 2"
            )
            first = groups.nth(0)
            titles = await groups.locator("h3").all_inner_texts()
            cards = await first.locator("li.card").all_inner_texts()
            checked = await first.locator("input.keep").evaluate_all(
                "boxes => boxes.map(box => box.checked)"
            )
            keeper = await first.locator("li.card.keeper").inner_text()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.locator("#duplicates-title").scroll_into_view_if_needed()
            await page.locator("#duplicate-groups").screenshot(
                path=str(SCREENSHOT.with_name("duplicates.png"))
            )

            # "Not a copy" separates the beach copy from the beach: that group goes.
            await (
                groups.nth(1)
                .get_by_role("button", name="beach-copy.jpg is not a copy of the others")
                .click()
            )
            await page.wait_for_function(
                "document.querySelectorAll('#duplicate-groups li.group').length == 1"
            )
            # Resolving keeps the checked keeper and deletes the two other holiday pictures.
            await groups.nth(0).get_by_role("button", name="Keep the checked pictures").click()
            await page.wait_for_function(
                "document.getElementById('duplicates-status').textContent === 'No copies found.'"
            )
            await page.wait_for_function("document.querySelectorAll('#gallery li').length == 4")

        async with httpx.AsyncClient(base_url=base_url) as api:
            stored = (await api.get("/api/v1/images/")).json()
            groups_left = (await api.get("/api/v1/duplicates")).json()

    assert titles[0].startswith("3 copies") and titles[1].startswith("2 copies")
    assert [card.startswith("suggested keeper") for card in cards] == [True, False, False]
    assert "640 \u00d7 480" in keeper and "holiday.jpg" in keeper
    assert checked == [True, False, False]
    assert sorted(item["filename"] for item in stored["items"]) == [
        "beach-copy.jpg",
        "beach.jpg",
        "holiday.jpg",
        "other.jpg",
    ]
    assert groups_left["total"] == 0
    assert browser.blocked == [] and browser.failed == []
