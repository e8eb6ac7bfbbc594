"""API keys and scopes with AUTH_REQUIRED on, on a database of their own (keys are committed,
as `python -m app keys create` commits them)."""

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import URL, make_url

from app.api.access import access_rules
from app.core.database import Database, create_engine
from app.models.api_key import KeyScope
from tests.support.app import DatabaseFactory, app_client, make_settings, settings_on_new_database
from tests.support.http import assert_error
from tests.support.images import jpeg_bytes
from tests.support.keys import add_key, revoke


@dataclass
class Service:
    client: AsyncClient
    url: URL
    keys: dict[KeyScope, str]
    image_id: str

    def as_(self, scope: KeyScope) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


@pytest.fixture(scope="module")
async def service(
    create_database: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """The app with AUTH_REQUIRED=true, keys read on every request, a key of each scope and one
    stored image."""
    settings, url = await settings_on_new_database(
        create_database,
        tmp_path_factory.mktemp("access"),
        "access",
        AUTH_REQUIRED=True,
        API_KEY_CACHE_SECONDS=0,
    )
    async with app_client(settings) as client:  # its start-up creates the tables
        keys: dict[KeyScope, str] = {
            scope: await add_key(url, f"{scope}-key", scope) for scope in ("read", "write", "admin")
        }
        stored = await client.post(
            "/api/v1/images/upload",
            files={"file": ("stored.jpg", jpeg_bytes(seed=1))},
            headers={"X-API-Key": keys["write"]},
        )
        assert stored.status_code == 201, stored.text
        yield Service(client, url, keys, stored.json()["id"])


async def _call(service: Service, method: str, path: str, headers: dict[str, str]) -> Response:
    path = path.replace("{image_id}", service.image_id).replace("{group_id}", str(uuid.uuid4()))
    client = service.client
    if path.endswith("/resolve"):
        return await client.post(path, json={"keep": [service.image_id]}, headers=headers)
    if path.endswith("/not-duplicates"):
        pair = [service.image_id, str(uuid.uuid4())]  # the second is not stored: a 404
        return await client.post(path, json={"pairs": [pair]}, headers=headers)
    if method == "POST":
        # A new picture each time, so every allowed upload is a 201.
        picture = jpeg_bytes(seed=uuid.uuid4().int % 10_000 + 10)
        return await client.post(path, files={"file": ("p.jpg", picture)}, headers=headers)
    if method == "DELETE":
        return await client.delete(f"/api/v1/images/{uuid.uuid4()}", headers=headers)
    return await client.get(path, headers=headers)


# Every operation that needs a key, the scope it needs, and its answer when allowed.
OPERATIONS: list[tuple[str, str, KeyScope, int]] = [
    ("GET", "/api/v1/images/", "read", 200),
    ("GET", "/api/v1/images/{image_id}", "read", 200),
    ("GET", "/api/v1/images/{image_id}/similar", "read", 200),
    ("POST", "/api/v1/images/search", "read", 200),
    ("GET", "/api/v1/images/{image_id}/file", "read", 200),
    ("GET", "/api/v1/images/{image_id}/thumbnail", "read", 200),
    ("POST", "/api/v1/images/upload", "write", 201),
    ("DELETE", "/api/v1/images/{image_id}", "write", 404),  # a random id: nothing to delete
    ("GET", "/api/v1/duplicates", "read", 200),
    ("GET", "/api/v1/duplicates/{group_id}", "read", 404),  # a random id: no such group
    ("POST", "/api/v1/duplicates/{group_id}/resolve", "write", 404),
    ("POST", "/api/v1/duplicates/not-duplicates", "write", 404),
    ("GET", "/api/v1/health/detailed", "admin", 200),
    ("GET", "/metrics", "admin", 200),
]


async def test_the_table_names_every_operation_that_needs_a_key(service: Service) -> None:
    documented = access_rules((await service.client.get("/api/v1/openapi.json")).json())

    assert sorted(documented) == sorted((m, p, scope) for m, p, scope, _ in OPERATIONS)


@pytest.mark.parametrize(("method", "path", "needed", "allowed"), OPERATIONS)
async def test_each_operation_needs_its_scope(
    service: Service, method: str, path: str, needed: KeyScope, allowed: int
) -> None:
    anonymous = await _call(service, method, path, {})
    answers = {
        scope: await _call(service, method, path, service.as_(scope)) for scope in service.keys
    }

    assert_error(anonymous, 401, "not_authorized")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for scope, answer in answers.items():
        if scope == needed or (needed, scope) in {
            ("read", "write"),
            ("read", "admin"),
            ("write", "admin"),
        }:
            assert answer.status_code == allowed, (scope, answer.text)
        else:
            assert_error(answer, 403, "insufficient_scope")
            assert answer.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
            assert f"needs a key of scope {needed}" in answer.json()["detail"]


async def test_probes_info_the_page_and_the_docs_need_no_key(service: Service) -> None:
    paths = [
        "/api/v1/health",
        "/api/v1/health/",
        "/api/v1/health/live",
        "/api/v1/health/ready",
        "/info",
        "/",
        "/docs",
        "/api/v1/openapi.json",
    ]
    statuses = {path: (await service.client.get(path)).status_code for path in paths}

    assert statuses == dict.fromkeys(paths, 200)


async def test_the_key_goes_in_a_bearer_header_or_x_api_key(service: Service) -> None:
    key = service.keys["read"]
    bearer = await service.client.get("/api/v1/images/", headers={"Authorization": f"Bearer {key}"})
    header = await service.client.get("/api/v1/images/", headers={"X-API-Key": key})
    basic = await service.client.get("/api/v1/images/", headers={"Authorization": f"Basic {key}"})
    both = await service.client.get(
        "/api/v1/images/", headers={"Authorization": "Bearer nope", "X-API-Key": key}
    )

    assert bearer.status_code == header.status_code == 200
    assert bearer.json()["total"] >= 1
    # Credentials that are sent are checked: a good X-API-Key does not excuse a bad header.
    assert_error(basic, 401, "invalid_api_key")
    assert_error(both, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "given",
    ["isk_" + "A" * 43, "not-a-key", "isk_short", "Bearer", "x" * 5000],
    ids=["unknown", "malformed", "short", "word", "huge"],
)
async def test_an_unknown_key_is_a_401_that_says_so(service: Service, given: str) -> None:
    answer = await service.client.get("/api/v1/images/", headers={"X-API-Key": given})

    assert_error(answer, 401, "invalid_api_key")
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert given not in answer.text


async def test_a_revoked_key_is_refused_on_its_next_request(service: Service) -> None:
    key = await add_key(service.url, "short-lived", "read")
    before = await service.client.get("/api/v1/images/", headers={"X-API-Key": key})
    await revoke(service.url, "short-lived")
    after = await service.client.get("/api/v1/images/", headers={"X-API-Key": key})

    assert before.status_code == 200
    assert_error(after, 401, "invalid_api_key")


async def test_a_key_over_its_rate_gets_429_with_retry_after(service: Service) -> None:
    key = await add_key(service.url, "slow", "read", rate_limit=0.1, burst=2)
    headers = {"X-API-Key": key}
    answers = [await service.client.get("/api/v1/images/", headers=headers) for _ in range(3)]
    other_key = await service.client.get("/api/v1/images/", headers=service.as_("read"))
    metrics = await service.client.get("/metrics", headers=service.as_("admin"))

    assert [answer.status_code for answer in answers[:2]] == [200, 200]
    assert_error(answers[2], 429, "rate_limited")
    # The next token is 10 s away at 0.1 requests a second.
    assert 1 <= int(answers[2].headers["retry-after"]) <= 10
    assert other_key.status_code == 200  # buckets are per key
    assert 'requests_shed_total{reason="rate_limited"} 1.0' in metrics.text


async def test_no_key_or_digest_appears_in_logs_metrics_or_answers(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    key = await add_key(service.url, "secretive", "read")
    revoked = await add_key(service.url, "gone", "write")
    await revoke(service.url, "gone")
    secrets = [key, revoked, service.keys["admin"]]
    with caplog.at_level(logging.DEBUG):
        answers = [
            await service.client.get("/api/v1/images/", headers={"X-API-Key": key}),
            await _call(service, "POST", "/api/v1/images/upload", {"X-API-Key": key}),
            await service.client.get("/api/v1/images/", headers={"X-API-Key": revoked}),
            await service.client.get("/api/v1/images/nope", headers={"X-API-Key": key}),
            await service.client.get("/metrics", headers=service.as_("admin")),
        ]

    assert [answer.status_code for answer in answers] == [200, 403, 401, 422, 200]
    seen = caplog.text + "".join(answer.text + str(answer.headers) for answer in answers)
    assert "GET /api/v1/images/ 200" in caplog.text  # the access log did run
    for secret in secrets:
        assert secret not in seen
        assert hashlib.sha256(secret.encode()).hexdigest() not in seen


async def test_admin_token_counts_as_an_admin_key(
    create_database: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings, _ = await settings_on_new_database(
        create_database,
        tmp_path_factory.mktemp("token"),
        "access_token",
        AUTH_REQUIRED=True,
        ADMIN_TOKEN="s3cret-token",  # noqa: S106
    )
    token = {"Authorization": "Bearer s3cret-token"}
    async with app_client(settings) as client:
        upload = await client.post(
            "/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes())}, headers=token
        )
        metrics = await client.get("/metrics", headers=token)
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-tokem"})

    assert upload.status_code == 201
    assert metrics.status_code == 200
    assert_error(wrong, 401, "invalid_api_key")


async def test_a_key_lookup_with_the_database_down_is_a_503(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = make_url("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    dead = Database(create_engine(url), url)
    settings = make_settings(tmp_path_factory.mktemp("down"), AUTH_REQUIRED=True)
    async with app_client(settings, database=dead) as client:
        answer = await client.get("/api/v1/images/", headers={"X-API-Key": "isk_" + "B" * 43})
    await dead.engine.dispose()

    assert_error(answer, 503, "database_unavailable")
    assert answer.headers["retry-after"] == "5"


async def test_the_openapi_document_offers_both_schemes_per_operation(service: Service) -> None:
    document = (await service.client.get("/api/v1/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    paths = document["paths"]

    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    assert paths["/api/v1/images/upload"]["post"]["security"] == [
        {"bearer": ["write"]},
        {"apiKey": ["write"]},
    ]
    assert paths["/api/v1/images/{image_id}"]["get"]["security"] == [
        {"bearer": ["read"]},
        {"apiKey": ["read"]},
    ]
    assert "security" not in paths["/api/v1/health/live"]["get"]
    assert "401" in paths["/api/v1/images/upload"]["post"]["responses"]
    assert "403" in paths["/api/v1/images/upload"]["post"]["responses"]
