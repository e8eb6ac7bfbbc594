"""Health probes, /info, the documentation endpoints and the error shape of unknown routes."""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import make_url

from app.core.database import Database, create_engine
from tests.support.app import MakeClient, app_client, make_settings
from tests.support.images import jpeg_bytes


async def test_health_answers_200_with_and_without_trailing_slash(client: AsyncClient) -> None:
    for path in ("/api/v1/health", "/api/v1/health/"):
        response = await client.get(path)
        assert response.status_code == 200, path  # directly: no redirect
        assert response.json()["status"] == "healthy"
        assert response.json()["database"] == "ok"


async def test_live_and_ready_answer_200(client: AsyncClient) -> None:
    assert (await client.get("/api/v1/health/live")).json() == {"status": "alive"}
    ready = await client.get("/api/v1/health/ready")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "database": "ok", "storage": "ok"},
    )


async def test_detailed_health_reports_database_pgvector_and_embedding(
    client: AsyncClient,
) -> None:
    body = (await client.get("/api/v1/health/detailed")).json()

    assert body["status"] == "healthy"
    assert body["database"]["status"] == "ok"
    assert body["database"]["mode"] == "embedded"
    assert int(body["database"]["server_version"].split(".")[0]) >= 15
    assert body["database"]["pgvector_version"].startswith("0.")
    assert body["image_count"] == 0
    assert body["embedding"] == {
        "model": "perceptual",
        "dimension": 512,
        "stored_models": {},
        "stale_images": 0,
    }
    assert body["uptime_seconds"] >= 0


async def test_detailed_health_never_shows_secrets(make_client: MakeClient) -> None:
    database_url = "postgresql://admin:s3cr3t-pw@db.internal:5432/images"
    async with make_client(DATABASE_URL=database_url) as client:
        body = (await client.get("/api/v1/health/detailed")).text

    assert "s3cr3t-pw" not in body
    assert "db.internal" not in body
    assert '"mode":"external"' in body


@pytest.fixture
async def database_down_client(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    """The app on a PostgreSQL address where nothing listens."""
    url = make_url("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    dead = Database(create_engine(url), url)
    async with app_client(make_settings(tmp_path), database=dead) as client:
        yield client
    await dead.engine.dispose()


async def test_probes_with_the_database_down(database_down_client: AsyncClient) -> None:
    live = await database_down_client.get("/api/v1/health/live")
    ready = await database_down_client.get("/api/v1/health/ready")
    health = await database_down_client.get("/api/v1/health")
    detailed = await database_down_client.get("/api/v1/health/detailed")

    assert live.status_code == 200
    assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")
    assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
    assert detailed.status_code == 503
    assert detailed.json()["database"]["status"] == "unavailable"
    assert "127.0.0.1" not in detailed.text


async def test_image_endpoints_with_the_database_down_answer_503(
    database_down_client: AsyncClient,
) -> None:
    listing = await database_down_client.get("/api/v1/images/")
    similar = await database_down_client.get(f"/api/v1/images/{uuid.uuid4()}/similar")

    for response in (listing, similar):
        assert response.status_code == 503
        assert response.json()["code"] == "database_unavailable"
        assert response.headers["retry-after"].isdigit()


async def test_info_reports_limits_formats_and_embedding(client: AsyncClient) -> None:
    body = (await client.get("/info")).json()

    assert body["name"] and body["version"]
    assert body["upload"]["max_file_size"] == 10 * 1024 * 1024
    assert body["upload"]["max_image_pixels"] == 50_000_000
    assert body["upload"]["accepted_formats"] == [
        "AVIF", "BMP", "GIF", "HEIC", "HEIF", "JPEG", "PNG", "TIFF", "WEBP"
    ]  # fmt: skip
    assert body["upload"]["accepted_content_types"][3] == "image/heic"
    assert {".heic", ".webp", ".avif", ".tif", ".jpg"} <= set(body["upload"]["allowed_extensions"])
    assert body["embedding"] == {"model": "perceptual", "dimension": 512}
    assert (await client.head("/info")).status_code == 200  # `curl -I /info` works


async def test_info_lists_jpeg_and_png_whatever_allowed_extensions_says(
    make_client: MakeClient,
) -> None:
    async with make_client(ALLOWED_EXTENSIONS=".webp") as client:
        upload = (await client.get("/info")).json()["upload"]

    assert upload["accepted_formats"] == ["JPEG", "PNG", "WEBP"]
    assert upload["accepted_content_types"] == ["image/jpeg", "image/png", "image/webp"]
    assert upload["allowed_extensions"] == [".jpg", ".jpeg", ".png", ".webp"]


async def test_docs_redoc_and_openapi_are_served(client: AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200
    schema = (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/images/upload" in schema["paths"]
    assert "/api/v1/health/" in schema["paths"]


async def test_openapi_documents_the_error_shape_of_every_operation(client: AsyncClient) -> None:
    schema = (await client.get("/api/v1/openapi.json")).json()
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/images"):
            continue
        for method, operation in operations.items():
            errors = {
                status: spec for status, spec in operation["responses"].items() if status >= "4"
            }
            assert errors, f"{method} {path} documents no errors"
            for status, spec in errors.items():
                ref = spec["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith(("/ErrorResponse", "/ValidationErrorResponse")), (path, status)


async def test_unknown_routes_and_methods_get_the_json_error_shape(client: AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    wrong_method = await client.put("/api/v1/images/upload")

    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


async def test_upload_with_the_database_down_is_a_503_and_leaves_no_file(
    database_down_client: AsyncClient, tmp_path: Path
) -> None:
    response = await database_down_client.post(
        "/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}
    )

    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"].isdigit()
    assert [path for path in (tmp_path / "data").rglob("*") if path.is_file()] == []
