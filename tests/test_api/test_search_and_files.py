"""Search by an image that is not stored, match labels, files and thumbnails back, filters."""

import io
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from PIL import Image as PILImage
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from tests.support.database import row_count
from tests.support.http import assert_error, stored_files, upload
from tests.support.images import encode, jpeg_bytes, png_bytes, scene


async def test_search_by_an_uploaded_image_labels_matches_and_stores_nothing(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    original = scene(640, 480, seed=1)
    exact_bytes = encode(original, "JPEG", quality=90)
    stored = (await upload(client, exact_bytes, "original.jpg")).json()["id"]
    edited = (await upload(client, encode(original.resize((320, 240)), "JPEG", quality=40))).json()[
        "id"
    ]
    unrelated = (await upload(client, encode(scene(640, 480, seed=2), "JPEG"))).json()["id"]
    rows_before, files_before = await row_count(connection), stored_files(settings)

    response = await client.post(
        "/api/v1/images/search",
        files={"file": ("query.jpg", exact_bytes, "image/jpeg")},
        data={"limit": "5", "threshold": "0.6"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["query_image_id"] is None
    labels = {match["id"]: match["match"] for match in body["similar_images"]}
    assert labels == {stored: "exact", edited: "near_duplicate"}
    assert unrelated not in labels
    assert body["total_results"] == 2
    assert await row_count(connection) == rows_before
    assert stored_files(settings) == files_before


async def test_similar_labels_near_duplicates_and_merely_similar_images(
    client: AsyncClient,
) -> None:
    original = scene(640, 480, seed=1)
    query = (await upload(client, encode(original, "JPEG", quality=90))).json()["id"]
    edited = (await upload(client, encode(original.resize((320, 240)), "JPEG", quality=40))).json()[
        "id"
    ]
    other = (await upload(client, encode(scene(640, 480, seed=2), "JPEG"))).json()["id"]

    body = (await client.get(f"/api/v1/images/{query}/similar?threshold=-1")).json()

    labels = {match["id"]: match["match"] for match in body["similar_images"]}
    assert labels == {edited: "near_duplicate", other: "similar"}


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [({"limit": "0"}, 422, "validation_error"), ({"threshold": "nan"}, 422, "validation_error")],
)
async def test_search_rejects_bad_parameters(
    client: AsyncClient, form: dict[str, str], status: int, code: str
) -> None:
    response = await client.post(
        "/api/v1/images/search", files={"file": ("q.jpg", jpeg_bytes())}, data=form
    )
    assert_error(response, status, code)


async def test_search_rejects_a_non_image_with_415(client: AsyncClient) -> None:
    response = await client.post("/api/v1/images/search", files={"file": ("q.jpg", b"hello")})
    assert_error(response, 415, "unsupported_image_format")


async def test_file_returns_the_original_bytes_with_caching_headers(client: AsyncClient) -> None:
    data = png_bytes(40, 30)
    image_id = (await upload(client, data, "../my picture.png", "image/png")).json()["id"]

    response = await client.get(f"/api/v1/images/{image_id}/file")

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "my%20picture.png" in response.headers["content-disposition"]  # RFC 5987
    assert "inline" in response.headers["content-disposition"]
    etag = response.headers["etag"]
    again = await client.get(f"/api/v1/images/{image_id}/file", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    ("asked", "status", "content_range", "part"),
    [
        ("bytes=10-19", 206, "bytes 10-19/{size}", slice(10, 20)),
        ("bytes=-5", 206, "bytes {last5}-{end}/{size}", slice(-5, None)),
        ("bytes=100-", 206, "bytes 100-{end}/{size}", slice(100, None)),
        ("bytes=0-999999", 206, "bytes 0-{end}/{size}", slice(None)),
        ("bytes=0-1,5-6", 200, None, slice(None)),  # several ranges: the whole file
        ("pages=1-2", 200, None, slice(None)),  # not understood: the whole file
    ],
)
async def test_file_answers_one_byte_range(
    client: AsyncClient, asked: str, status: int, content_range: str | None, part: slice
) -> None:
    data = png_bytes(40, 30)
    size = len(data)
    image_id = (await upload(client, data, "p.png", "image/png")).json()["id"]

    response = await client.get(f"/api/v1/images/{image_id}/file", headers={"Range": asked})

    assert response.status_code == status
    assert response.content == data[part]
    assert response.headers["accept-ranges"] == "bytes"
    expected = content_range and content_range.format(size=size, end=size - 1, last5=size - 5)
    assert response.headers.get("content-range") == expected


async def test_a_range_past_the_end_is_a_416_and_a_stale_if_range_gets_the_whole_file(
    client: AsyncClient,
) -> None:
    data = png_bytes(40, 30)
    image_id = (await upload(client, data, "p.png", "image/png")).json()["id"]
    path = f"/api/v1/images/{image_id}/file"

    past = await client.get(path, headers={"Range": f"bytes={len(data)}-"})
    stale = await client.get(path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})

    assert_error(past, 416, "range_not_satisfiable")
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    assert (stale.status_code, stale.content) == (200, data)


async def test_file_of_an_unknown_image_is_a_404(client: AsyncClient) -> None:
    response = await client.get("/api/v1/images/00000000-0000-0000-0000-000000000000/file")
    assert_error(response, 404, "image_not_found")


async def test_file_missing_from_storage_is_reported(
    client: AsyncClient, settings: Settings
) -> None:
    image_id = (await upload(client, jpeg_bytes())).json()["id"]
    for path in stored_files(settings):
        path.unlink()
    assert_error(await client.get(f"/api/v1/images/{image_id}/file"), 404, "image_file_missing")


async def test_thumbnail_fits_the_size_is_upright_and_cached(
    client: AsyncClient, settings: Settings
) -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # displayed turned a quarter right: 300 x 200 stored, 200 x 300 shown
    data = encode(scene(300, 200), "JPEG", exif=exif.tobytes())
    image_id = (await upload(client, data)).json()["id"]

    response = await client.get(f"/api/v1/images/{image_id}/thumbnail?size=64")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    thumbnail = PILImage.open(io.BytesIO(response.content))
    assert thumbnail.size == (43, 64)  # portrait, as displayed
    cached = [path for path in (settings.image_dir / ".thumbnails").rglob("*") if path.is_file()]
    assert [path.relative_to(settings.image_dir).parts[2] for path in cached] == ["64.jpeg"]
    etag = response.headers["etag"]
    again = await client.get(
        f"/api/v1/images/{image_id}/thumbnail?size=64", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304

    await client.delete(f"/api/v1/images/{image_id}")
    assert [path for path in cached if path.exists()] == []


async def test_thumbnail_in_webp_and_of_a_transparent_png(client: AsyncClient) -> None:
    rgba = PILImage.new("RGBA", (100, 50), (255, 0, 0, 0))
    image_id = (await upload(client, encode(rgba, "PNG"), "t.png", "image/png")).json()["id"]

    response = await client.get(f"/api/v1/images/{image_id}/thumbnail?size=32&format=webp")

    assert response.headers["content-type"] == "image/webp"
    assert PILImage.open(io.BytesIO(response.content)).size == (32, 16)


@pytest.mark.parametrize("query", ["size=15", "size=1025", "size=abc", "format=gif"])
async def test_thumbnail_rejects_bad_parameters(client: AsyncClient, query: str) -> None:
    image_id = (await upload(client, jpeg_bytes())).json()["id"]
    response = await client.get(f"/api/v1/images/{image_id}/thumbnail?{query}")
    assert_error(response, 422, "validation_error")


async def test_listing_filters_by_content_type_and_upload_time(client: AsyncClient) -> None:
    jpeg = (await upload(client, jpeg_bytes(seed=1))).json()["id"]
    png = (await upload(client, png_bytes(seed=2), "p.png", "image/png")).json()["id"]
    now = datetime.now(UTC)
    later = (now + timedelta(hours=1)).isoformat()
    earlier = (now - timedelta(hours=1)).isoformat()

    only_png = (await client.get("/api/v1/images/", params={"content_type": "image/png"})).json()
    recent = (await client.get("/api/v1/images/", params={"uploaded_after": earlier})).json()
    future = (await client.get("/api/v1/images/", params={"uploaded_after": later})).json()
    before = (await client.get("/api/v1/images/", params={"uploaded_before": later})).json()

    assert [item["id"] for item in only_png["items"]] == [png]
    assert only_png["total"] == 1
    assert {item["id"] for item in recent["items"]} == {jpeg, png}
    assert future == {"items": [], "total": 0, "skip": 0, "limit": 20}
    assert before["total"] == 2


@pytest.mark.parametrize(
    "query",
    ["content_type=text/html", "uploaded_after=yesterday", "uploaded_after=2026-01-01T00:00:00"],
)
async def test_listing_rejects_bad_filters(client: AsyncClient, query: str) -> None:
    assert_error(await client.get(f"/api/v1/images/?{query}"), 422, "validation_error")
