"""Request ids, access logs, Prometheus metrics and the admin token."""

import http.client
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest
from httpx import AsyncClient

from app.core.observability import JsonFormatter, RequestIdFilter
from app.services import images as images_service
from tests.support.app import DatabaseFactory, MakeClient, settings_on_new_database
from tests.support.images import jpeg_bytes
from tests.support.live_server import live_server


async def test_every_response_carries_a_request_id(client: AsyncClient) -> None:
    generated = await client.get("/api/v1/health/live")
    echoed = await client.get("/api/v1/nothing", headers={"X-Request-ID": "abc-123"})
    hostile = await client.get("/api/v1/health/live", headers={"X-Request-ID": "a b\x7f" * 60})

    assert len(generated.headers["x-request-id"]) == 32
    assert echoed.status_code == 404
    assert echoed.headers["x-request-id"] == "abc-123"
    assert hostile.headers["x-request-id"] != "a b\x7f" * 60  # replaced, never echoed


async def test_one_access_log_line_per_request(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        await client.get("/api/v1/images/?limit=5", headers={"X-Request-ID": "req-1"})

    lines = [record for record in caplog.records if record.name == "app.access"]
    assert len(lines) == 1
    record = lines[0]
    assert (record.method, record.route, record.status) == ("GET", "/api/v1/images/", 200)  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    RequestIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["route"] == "/api/v1/images/"
    assert entry["status"] == 200
    assert set(entry) >= {"time", "level", "message", "request_id", "method", "duration_ms"}


async def test_metrics_count_requests_uploads_and_images(client: AsyncClient) -> None:
    await client.post("/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes(seed=1))})
    await client.post("/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes(seed=1))})
    await client.post("/api/v1/images/upload", files={"file": ("a.txt", b"not an image")})

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'image_uploads_total{outcome="created"} 1.0' in text
    assert 'image_uploads_total{outcome="duplicate"} 1.0' in text
    assert 'image_uploads_total{outcome="unsupported_image_format"} 1.0' in text
    assert (
        'http_requests_total{method="POST",route="/api/v1/images/upload",status="201"} 1.0' in text
    )
    assert "http_request_duration_seconds_bucket" in text
    assert "image_upload_bytes_total" in text
    assert "image_embedding_seconds_count 2.0" in text
    assert "images_stored 1.0" in text


async def test_metrics_leave_out_the_created_series_unless_asked(
    make_client: MakeClient,
) -> None:
    async with make_client() as client:
        await client.get("/api/v1/health/live")
        default = (await client.get("/metrics")).text
    async with make_client(METRICS_CREATED_SERIES=True) as client:
        await client.get("/api/v1/health/live")
        asked = (await client.get("/metrics")).text

    assert "_created" not in default
    assert 'http_requests_total{method="GET",route="/api/v1/health/live",status="200"}' in default
    # A counter's series is `<name>_created`, without its `_total`.
    assert 'http_requests_created{method="GET",route="/api/v1/health/live"' in asked
    assert "http_request_duration_seconds_created" in asked


async def test_metrics_name_the_route_that_served_the_request(client: AsyncClient) -> None:
    # /search and /{image_id} share a prefix: a literal path must not be counted under the
    # parameter template, nor the reverse.
    await client.post("/api/v1/images/search", files={"file": ("a.jpg", jpeg_bytes(seed=1))})
    await client.get("/api/v1/images/search")  # GET /{image_id} with an invalid id
    await client.get("/api/v1/health")  # served, but not in the OpenAPI schema

    text = (await client.get("/metrics")).text

    assert 'method="POST",route="/api/v1/images/search",status="200"' in text
    assert 'method="GET",route="/api/v1/images/{image_id}",status="422"' in text
    assert 'route="/api/v1/images/search",status="422"' not in text
    assert 'method="GET",route="/api/v1/health",status="200"' in text


@pytest.fixture
async def admin_client(make_client: MakeClient) -> AsyncIterator[AsyncClient]:
    async with make_client(ADMIN_TOKEN="s3cret") as client:  # noqa: S106
        yield client


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/health/detailed"])
async def test_admin_token_guards_metrics_and_detailed_health(
    admin_client: AsyncClient, path: str
) -> None:
    anonymous = await admin_client.get(path)
    wrong = await admin_client.get(path, headers={"Authorization": "Bearer nope"})
    right = await admin_client.get(path, headers={"Authorization": "Bearer s3cret"})

    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.json()["code"] == "not_authorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200


async def test_probes_stay_open_with_an_admin_token(admin_client: AsyncClient) -> None:
    for path in ("/api/v1/health", "/api/v1/health/live", "/api/v1/health/ready", "/info"):
        assert (await admin_client.get(path)).status_code == 200


async def test_an_unexpected_error_is_a_json_500_with_its_id_logged_once_on_a_kept_connection(
    tmp_path: Path,
    create_database: DatabaseFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "unexpected_error")

    async def broken(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("a bug")

    monkeypatch.setattr(images_service, "get_image", broken)
    # The id filter runs where the record is emitted: in the server's task, with its request.
    caplog.handler.addFilter(RequestIdFilter())
    uvicorn_errors = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    uvicorn_errors.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO), live_server(settings) as base_url:
            host, port = base_url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request(
                "GET", f"/api/v1/images/{uuid.uuid4()}", headers={"X-Request-ID": "bug-1"}
            )
            failed = connection.getresponse()
            failed_body = json.loads(failed.read())
            kept = connection.sock
            connection.request("GET", "/api/v1/health/live")
            after = connection.getresponse()
            after.read()
            reused = connection.sock is kept
            connection.close()
    finally:
        uvicorn_errors.removeHandler(caplog.handler)

    assert failed.status == 500
    assert failed_body == {"detail": "Internal server error", "code": "internal_error"}
    assert failed.getheader("X-Request-ID") == "bug-1"
    assert failed.getheader("Connection") != "close"
    assert after.status == 200 and reused  # the same connection serves the next request
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1
    assert tracebacks[0].request_id == "bug-1"  # type: ignore[attr-defined]
    assert "a bug" in caplog.text
