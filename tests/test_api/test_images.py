"""The image endpoints, over HTTP, against the real database."""

import shutil
import uuid
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient
from PIL import Image as PILImage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from tests.support.app import MakeClient
from tests.support.database import image_row, row_count
from tests.support.http import UPLOAD, assert_error, stored_files, upload
from tests.support.images import encode, jpeg_bytes, photo, png_bytes, scene


async def test_upload_jpeg_returns_201_and_stores_row_and_file(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    data = jpeg_bytes(120, 80)
    response = await upload(client, data, "holiday.jpg")

    assert response.status_code == 201
    body = response.json()
    assert body["filename"] == "holiday.jpg"
    assert body["processing_status"] == "completed"
    assert body["message"] == "Image uploaded and processed successfully"
    image = await image_row(connection, body["id"])
    assert image is not None
    assert image.file_size == len(data)
    assert [path.read_bytes() for path in stored_files(settings)] == [data]


async def test_get_image_returns_the_stored_record(client: AsyncClient) -> None:
    data = jpeg_bytes(120, 80)
    image_id = (await upload(client, data, "holiday.jpg")).json()["id"]

    response = await client.get(f"/api/v1/images/{image_id}")

    assert response.status_code == 200
    record = response.json()
    assert record["id"] == image_id
    assert record["filename"] == record["original_filename"] == "holiday.jpg"
    assert record["content_type"] == "image/jpeg"
    assert record["format"] == "JPEG"
    assert (record["width"], record["height"]) == (120, 80)
    assert record["file_size"] == len(data)
    assert record["processing_status"] == "completed"
    assert record["upload_timestamp"].endswith("Z")
    assert record["processed_timestamp"].endswith("Z")
    assert record["metadata"]["mode"] == "RGB"
    assert record["metadata"]["has_transparency"] is False
    assert record["metadata"]["embedding"] == {"model": "perceptual", "dimension": 512}


async def test_upload_png_with_alpha_reports_transparency(client: AsyncClient) -> None:
    rgba = photo(32, 32).convert("RGBA")
    response = await upload(client, encode(rgba, "PNG"), "logo.png", "image/png")

    record = (await client.get(f"/api/v1/images/{response.json()['id']}")).json()
    assert record["content_type"] == "image/png"
    assert record["metadata"]["mode"] == "RGBA"
    assert record["metadata"]["has_transparency"] is True


async def test_upload_decides_the_format_from_bytes_not_name_or_content_type(
    client: AsyncClient,
) -> None:
    response = await upload(client, png_bytes(), "not-really.jpg", "image/jpeg")

    assert response.status_code == 201
    record = (await client.get(f"/api/v1/images/{response.json()['id']}")).json()
    assert (record["format"], record["content_type"]) == ("PNG", "image/png")


async def test_uploading_the_same_bytes_again_returns_200_and_the_existing_id(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    data = jpeg_bytes()
    first = await upload(client, data, "a.jpg")
    second = await upload(client, data, "b.jpg")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert "already stored" in second.json()["message"]
    assert await row_count(connection) == 1
    assert len(stored_files(settings)) == 1


async def test_upload_sanitises_the_client_filename(client: AsyncClient) -> None:
    # Built by hand: HTTP clients tidy filenames themselves, hostile ones do not.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="../../etc/pass\x01wd.jpg"'
        b"\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg_bytes() + b"\r\n--b--\r\n"
    )
    response = await client.post(
        UPLOAD, content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )

    assert response.json()["filename"] == "passwd.jpg"
    record = (await client.get(f"/api/v1/images/{response.json()['id']}")).json()
    assert record["original_filename"] == "../../etc/passwd.jpg"


async def test_upload_reads_exif_and_reports_displayed_dimensions(client: AsyncClient) -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "Canon\x00"  # Make, with the NUL some cameras write
    exif[0x0110] = "EOS 5D"  # Model
    exif[0x0112] = 6  # Orientation: rotated 90 degrees
    data = encode(photo(120, 80), "JPEG", exif=exif.tobytes())

    response = await upload(client, data)
    record = (await client.get(f"/api/v1/images/{response.json()['id']}")).json()

    assert record["metadata"]["exif"] == {
        "camera_make": "Canon",
        "camera_model": "EOS 5D",
        "orientation": 6,
    }
    assert (record["width"], record["height"]) == (80, 120)


async def test_upload_accepts_gif_by_default(client: AsyncClient) -> None:
    response = await upload(client, encode(photo(), "GIF"), "anim.gif", "image/gif")
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"just some text, not an image", "notes.jpg"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "doc.jpg"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "vector.png"),
        (encode(photo(), "ICO"), "favicon.png"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "movie.heic"),
        (b"8BPS\x00\x01" + b"\x00" * 64, "layers.png"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "drawing.jpg"),
    ],
    ids=["text", "pdf", "svg", "ico", "quicktime", "psd", "eps"],
)
async def test_upload_rejects_non_images_with_415_and_stores_nothing(
    client: AsyncClient, connection: AsyncConnection, settings: Settings, data: bytes, filename: str
) -> None:
    response = await upload(client, data, filename)

    assert_error(response, 415, "unsupported_image_format")
    assert await row_count(connection) == 0
    assert stored_files(settings) == []


async def test_upload_rejects_formats_left_out_of_allowed_extensions(
    make_client: MakeClient,
) -> None:
    async with make_client(ALLOWED_EXTENSIONS=".jpg,.png") as client:
        response = await upload(client, encode(photo(), "GIF"), "anim.gif", "image/gif")
    assert_error(response, 415, "unsupported_image_format")


@pytest.mark.parametrize(
    "data",
    [jpeg_bytes(200, 200)[:600], b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
    ids=["truncated-jpeg", "corrupt-png"],
)
async def test_upload_rejects_corrupt_images_with_422_and_stores_nothing(
    client: AsyncClient, connection: AsyncConnection, settings: Settings, data: bytes
) -> None:
    response = await upload(client, data)

    assert_error(response, 422, "invalid_image")
    assert await row_count(connection) == 0
    assert stored_files(settings) == []


async def test_upload_rejects_an_empty_file_with_422(client: AsyncClient) -> None:
    assert_error(await upload(client, b""), 422, "empty_file")


async def test_upload_without_a_file_field_is_a_422(client: AsyncClient) -> None:
    response = await client.post(UPLOAD, data={"other": "value"})
    assert_error(response, 422, "validation_error")
    assert response.json()["errors"][0]["loc"] == ["body", "file"]


async def test_upload_with_a_malformed_body_is_a_4xx_json_error(client: AsyncClient) -> None:
    response = await client.post(
        UPLOAD, content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code in {400, 422}
    assert response.json()["code"] in {"bad_request", "validation_error"}


@pytest.fixture
async def small_limit_client(make_client: MakeClient) -> AsyncIterator[AsyncClient]:
    async with make_client(MAX_FILE_SIZE=100_000, MAX_IMAGE_PIXELS=10_000) as client:
        yield client


async def test_upload_over_max_file_size_is_a_413(small_limit_client: AsyncClient) -> None:
    response = await upload(small_limit_client, b"\xff\xd8\xff" + b"\x00" * 200_000)
    assert_error(response, 413, "file_too_large")


async def test_upload_over_max_file_size_without_content_length_is_a_413(
    small_limit_client: AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for _ in range(1000):  # would be 64 MB if it were all read
            sent += 1
            yield b"\x00" * 65536

    response = await small_limit_client.post(
        UPLOAD, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_error(response, 413, "file_too_large")
    assert sent < 10  # refused while streaming, not after buffering everything


async def test_upload_of_too_many_pixels_is_a_422(small_limit_client: AsyncClient) -> None:
    response = await upload(small_limit_client, png_bytes(200, 200))
    assert_error(response, 422, "image_too_large")


async def test_upload_of_a_20000_by_20000_png_is_refused_before_decoding(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    # A few hundred KB on the wire, 1.2 GB once decoded: refused from its header.
    bomb = encode(PILImage.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 1_000_000
    assert_error(await upload(client, bomb, "bomb.png", "image/png"), 422, "image_too_large")
    assert await row_count(connection) == 0


async def test_upload_with_more_frames_than_max_frames_is_a_422(
    make_client: MakeClient,
) -> None:
    frames = [photo(seed=seed) for seed in range(3)]
    animation = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    async with make_client(MAX_FRAMES=2) as client:
        response = await upload(client, animation, "anim.gif", "image/gif")
    assert_error(response, 422, "image_too_large")
    assert "frames" in response.json()["detail"]


async def test_a_broken_icc_profile_does_not_cost_the_upload(client: AsyncClient) -> None:
    data = encode(photo(), "JPEG", icc_profile=b"definitely not an ICC profile")
    response = await upload(client, data)
    assert response.status_code == 201


async def test_failed_insert_leaves_no_file_behind(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    # A real database failure at insert time, from a trigger (rolled back with the test).
    await connection.execute(
        text(
            "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$"
        )
    )
    await connection.execute(
        text("CREATE TRIGGER fail_insert BEFORE INSERT ON images EXECUTE FUNCTION fail_insert()")
    )

    response = await upload(client, jpeg_bytes())

    assert_error(response, 500, "internal_error")
    assert "disk on fire" not in response.text
    assert stored_files(settings) == []


async def test_get_unknown_image_is_a_404(client: AsyncClient) -> None:
    response = await client.get(f"/api/v1/images/{uuid.uuid4()}")
    assert_error(response, 404, "image_not_found")


@pytest.mark.parametrize("bad_id", ["nope", "123", "550e8400-e29b-41d4-a716-44665544000Z"])
async def test_malformed_image_id_is_a_422(client: AsyncClient, bad_id: str) -> None:
    for path in (f"/api/v1/images/{bad_id}", f"/api/v1/images/{bad_id}/similar"):
        assert_error(await client.get(path), 422, "validation_error")
    assert_error(await client.delete(f"/api/v1/images/{bad_id}"), 422, "validation_error")


async def test_list_images_pages_newest_first(client: AsyncClient) -> None:
    ids = [(await upload(client, jpeg_bytes(seed=seed))).json()["id"] for seed in range(3)]

    first_page = (await client.get("/api/v1/images/?skip=0&limit=2")).json()
    second_page = (await client.get("/api/v1/images/?skip=2&limit=2")).json()

    assert first_page["total"] == second_page["total"] == 3
    assert (first_page["skip"], first_page["limit"]) == (0, 2)
    assert [item["id"] for item in first_page["items"]] == [ids[2], ids[1]]
    assert [item["id"] for item in second_page["items"]] == [ids[0]]


async def test_list_images_answers_with_and_without_the_trailing_slash(
    client: AsyncClient,
) -> None:
    stored = (await upload(client, jpeg_bytes(seed=1))).json()["id"]

    with_slash = await client.get("/api/v1/images/?limit=5")
    without_slash = await client.get("/api/v1/images?limit=5")

    assert with_slash.status_code == without_slash.status_code == 200  # no 307 redirect
    assert with_slash.json() == without_slash.json()
    assert [item["id"] for item in without_slash.json()["items"]] == [stored]
    assert without_slash.json()["limit"] == 5


async def test_list_images_defaults(client: AsyncClient) -> None:
    body = (await client.get("/api/v1/images/")).json()
    assert body == {"items": [], "total": 0, "skip": 0, "limit": 20}


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "skip=-1", "skip=99999999999999999999", "limit=abc", "skip=%00"],
)
async def test_list_images_rejects_out_of_range_parameters(client: AsyncClient, query: str) -> None:
    assert_error(await client.get(f"/api/v1/images/?{query}"), 422, "validation_error")


async def test_similar_returns_other_images_best_first_without_the_query_image(
    client: AsyncClient,
) -> None:
    ids = [(await upload(client, jpeg_bytes(seed=seed))).json()["id"] for seed in range(4)]

    response = await client.get(f"/api/v1/images/{ids[0]}/similar?limit=5&threshold=-1")

    assert response.status_code == 200
    body = response.json()
    assert body["query_image_id"] == ids[0]
    found = [match["id"] for match in body["similar_images"]]
    assert sorted(found) == sorted(ids[1:])
    scores = [match["similarity_score"] for match in body["similar_images"]]
    assert scores == sorted(scores, reverse=True)
    assert body["total_results"] == 3
    assert body["search_timestamp"].endswith("Z")
    assert set(body["similar_images"][0]) == {
        "id",
        "filename",
        "content_type",
        "similarity_score",
        "upload_timestamp",
        "match",
    }


async def test_similar_applies_limit_and_threshold(client: AsyncClient) -> None:
    ids = [(await upload(client, jpeg_bytes(seed=seed))).json()["id"] for seed in range(4)]

    limited = (await client.get(f"/api/v1/images/{ids[0]}/similar?limit=2&threshold=-1")).json()
    perfect = (await client.get(f"/api/v1/images/{ids[0]}/similar?threshold=1")).json()

    assert limited["total_results"] == 2
    assert perfect == {**perfect, "similar_images": [], "total_results": 0}


async def test_similar_finds_an_edited_copy_at_the_default_threshold(client: AsyncClient) -> None:
    original = scene(640, 480, seed=1)
    query = (await upload(client, encode(original, "JPEG", quality=90))).json()["id"]
    copy = (await upload(client, encode(original.resize((320, 240)), "JPEG", quality=40))).json()
    unrelated = (await upload(client, encode(scene(640, 480, seed=2), "JPEG"))).json()

    body = (await client.get(f"/api/v1/images/{query}/similar")).json()

    found = [match["id"] for match in body["similar_images"]]
    assert found == [copy["id"]]
    assert unrelated["id"] not in found
    assert body["similar_images"][0]["similarity_score"] > 0.9


async def test_hash_model_only_finds_identical_bytes(make_client: MakeClient) -> None:
    async with make_client(EMBEDDING_MODEL="hash") as client:
        original = scene(640, 480, seed=1)
        query = (await upload(client, encode(original, "JPEG", quality=90))).json()["id"]
        await upload(client, encode(original.resize((320, 240)), "JPEG", quality=40))
        strict = (await client.get(f"/api/v1/images/{query}/similar?threshold=0.5")).json()
        record = (await client.get(f"/api/v1/images/{query}")).json()

    # Different bytes give unrelated hash embeddings (cosine near 0), even for a copy.
    assert strict["similar_images"] == []
    assert record["metadata"]["embedding"] == {"model": "hash", "dimension": 512}


async def test_similar_of_unknown_image_is_a_404(client: AsyncClient) -> None:
    response = await client.get(f"/api/v1/images/{uuid.uuid4()}/similar")
    assert_error(response, 404, "image_not_found")


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "threshold=1.5", "threshold=-2", "threshold=nan", "threshold=inf"],
)
async def test_similar_rejects_out_of_range_parameters(client: AsyncClient, query: str) -> None:
    image_id = (await upload(client, jpeg_bytes())).json()["id"]
    response = await client.get(f"/api/v1/images/{image_id}/similar?{query}")
    assert_error(response, 422, "validation_error")


async def test_delete_removes_row_and_file_and_a_second_delete_is_a_404(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    image_id = (await upload(client, jpeg_bytes())).json()["id"]

    response = await client.delete(f"/api/v1/images/{image_id}")

    assert response.status_code == 204
    assert response.content == b""
    assert await row_count(connection) == 0
    assert stored_files(settings) == []
    assert_error(await client.get(f"/api/v1/images/{image_id}"), 404, "image_not_found")
    assert_error(await client.delete(f"/api/v1/images/{image_id}"), 404, "image_not_found")


async def test_deleted_bytes_can_be_uploaded_again(client: AsyncClient, settings: Settings) -> None:
    data = jpeg_bytes()
    first = (await upload(client, data)).json()["id"]
    await client.delete(f"/api/v1/images/{first}")

    again = await upload(client, data)

    assert again.status_code == 201
    assert again.json()["id"] != first
    assert len(stored_files(settings)) == 1


async def test_unwritable_storage_is_a_503_and_leaves_no_row(
    client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    # Storage root replaced by a plain file: every directory creation under it fails.
    shutil.rmtree(settings.image_dir)
    settings.image_dir.write_bytes(b"")
    response = await upload(client, jpeg_bytes())

    assert_error(response, 503, "storage_unavailable")
    assert await row_count(connection) == 0
