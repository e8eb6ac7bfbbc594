"""The API with STORAGE_BACKEND=s3, on a real S3 server (SeaweedFS): what is in the bucket
after each request, signed redirects, and a store that cannot be reached."""

import hashlib
import io

import httpx
import obstore
from PIL import Image as PILImage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.storage import image_key
from bench.seaweedfs import S3Server
from tests.support.app import MakeClient
from tests.support.database import image_row, row_count
from tests.support.http import assert_error, upload
from tests.support.images import encode, jpeg_bytes, scene
from tests.support.storage import bucket_keys, image_keys, thumbnail_keys


async def test_an_upload_is_an_object_with_its_type_and_name_served_back_by_file(
    make_client: MakeClient,
    s3_server: S3Server,
    s3_settings: dict[str, str],
    connection: AsyncConnection,
) -> None:
    data = jpeg_bytes(120, 80)
    async with make_client(**s3_settings) as client:
        image_id = (await upload(client, data, "holiday photo.jpg")).json()["id"]
        file = await client.get(f"/api/v1/images/{image_id}/file")
        etag = file.headers["etag"]
        cached = await client.get(
            f"/api/v1/images/{image_id}/file", headers={"If-None-Match": etag}
        )

    row = await image_row(connection, image_id)
    assert row is not None
    assert row.file_path == image_key(row.content_hash, ".jpg")
    prefix = s3_settings["S3_PREFIX"]
    assert bucket_keys(s3_server, prefix) == [row.file_path]
    stored = await obstore.get_async(s3_server.client(prefix), row.file_path)
    assert bytes(await stored.bytes_async()) == data
    assert stored.attributes == {
        "Content-Type": "image/jpeg",
        "Content-Disposition": "inline; filename*=utf-8''holiday%20photo.jpg",
    }
    assert (file.status_code, file.content) == (200, data)
    assert file.headers["content-type"] == "image/jpeg"
    assert file.headers["content-length"] == str(len(data))
    assert file.headers["content-disposition"] == stored.attributes["Content-Disposition"]
    assert etag == f'"{row.content_hash}"'
    assert (cached.status_code, cached.content) == (304, b"")


async def test_thumbnails_are_cached_in_the_bucket_and_deleted_with_the_image(
    make_client: MakeClient, s3_server: S3Server, s3_settings: dict[str, str]
) -> None:
    prefix = s3_settings["S3_PREFIX"]
    async with make_client(**s3_settings) as client:
        image_id = (await upload(client, encode(scene(300, 200), "JPEG"))).json()["id"]
        first = await client.get(f"/api/v1/images/{image_id}/thumbnail?size=64")
        cached_keys = thumbnail_keys(bucket_keys(s3_server, prefix))
        again = await client.get(f"/api/v1/images/{image_id}/thumbnail?size=64")
        webp = await client.get(f"/api/v1/images/{image_id}/thumbnail?size=64&format=webp")
        both = thumbnail_keys(bucket_keys(s3_server, prefix))
        deleted = await client.delete(f"/api/v1/images/{image_id}")

    assert first.status_code == 200
    assert PILImage.open(io.BytesIO(first.content)).size == (64, 43)
    assert [key.rsplit("/", 1)[1] for key in cached_keys] == ["64.jpeg"]
    assert again.content == first.content
    assert webp.headers["content-type"] == "image/webp"
    assert [key.rsplit("/", 1)[1] for key in both] == ["64.jpeg", "64.webp"]
    assert deleted.status_code == 204
    assert bucket_keys(s3_server, prefix) == []


async def test_file_redirects_to_a_short_lived_signed_url_when_asked(
    make_client: MakeClient, s3_settings: dict[str, str]
) -> None:
    data = jpeg_bytes(90, 60)
    # Clients reach the store by another name than the service does.
    public = s3_settings["S3_ENDPOINT_URL"].replace("127.0.0.1", "localhost")
    settings = {
        **s3_settings,
        "S3_PUBLIC_ENDPOINT_URL": public,
        "FILE_REDIRECT": "signed",
        "FILE_REDIRECT_EXPIRY_SECONDS": 120,
    }
    async with make_client(**settings) as client:
        image_id = (await upload(client, data)).json()["id"]
        redirect = await client.get(f"/api/v1/images/{image_id}/file")
        not_modified = await client.get(
            f"/api/v1/images/{image_id}/file", headers={"If-None-Match": "*"}
        )
    location = redirect.headers["location"]
    async with httpx.AsyncClient() as store_client:
        fetched = await store_client.get(location)

    assert redirect.status_code == 307
    assert redirect.headers["cache-control"] == "no-store"
    assert location.startswith(f"{public}/{s3_settings['S3_BUCKET']}/")
    assert "X-Amz-Expires=120" in location
    assert (fetched.status_code, fetched.content) == (200, data)
    assert fetched.headers["content-type"] == "image/jpeg"
    assert not_modified.status_code == 304


async def test_uploads_answer_503_with_retry_after_and_store_nothing_when_the_store_is_down(
    make_client: MakeClient, connection: AsyncConnection, s3_settings: dict[str, str]
) -> None:
    down = {**s3_settings, "S3_ENDPOINT_URL": "http://127.0.0.1:9", "S3_MAX_RETRIES": 0}
    async with make_client(**down) as client:
        response = await upload(client, jpeg_bytes())
        ready = await client.get("/api/v1/health/ready")
        health = await client.get("/api/v1/health")
        detailed = (await client.get("/api/v1/health/detailed")).json()

    assert_error(response, 503, "storage_unavailable")
    assert response.headers["retry-after"] == "5"
    assert await row_count(connection) == 0
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "not_ready", "database": "ok", "storage": "unavailable"},
    )
    assert (health.status_code, health.json()["storage"]) == (503, "unavailable")
    assert detailed["storage"] == {"status": "unavailable", "backend": "s3"}
    assert "127.0.0.1:9" not in str(detailed)


async def test_the_same_bytes_twice_keep_one_object(
    make_client: MakeClient, s3_server: S3Server, s3_settings: dict[str, str]
) -> None:
    data = jpeg_bytes(seed=3)
    async with make_client(**s3_settings) as client:
        first, second = [await upload(client, data, name) for name in ("a.jpg", "b.jpg")]

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert len(image_keys(bucket_keys(s3_server, s3_settings["S3_PREFIX"]))) == 1


async def test_a_failed_insert_leaves_nothing_in_the_bucket(
    make_client: MakeClient,
    connection: AsyncConnection,
    s3_server: S3Server,
    s3_settings: dict[str, str],
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
    async with make_client(**s3_settings) as client:
        response = await upload(client, jpeg_bytes())

    assert_error(response, 500, "internal_error")
    assert bucket_keys(s3_server, s3_settings["S3_PREFIX"]) == []


async def test_an_object_left_behind_with_the_same_bytes_is_taken_over_by_the_upload(
    make_client: MakeClient,
    connection: AsyncConnection,
    s3_server: S3Server,
    s3_settings: dict[str, str],
) -> None:
    data = jpeg_bytes(seed=5)
    key = image_key(hashlib.sha256(data).hexdigest(), ".jpg")
    prefix = s3_settings["S3_PREFIX"]
    # As an upload whose commit outcome was unknown leaves it (no row).
    await obstore.put_async(s3_server.client(prefix), key, data)
    async with make_client(**s3_settings) as client:
        response = await upload(client, data)
        file = await client.get(f"/api/v1/images/{response.json()['id']}/file")

    row = await image_row(connection, response.json()["id"])
    assert response.status_code == 201
    assert row is not None and row.file_path == key
    assert file.content == data
    assert bucket_keys(s3_server, prefix) == [key]
