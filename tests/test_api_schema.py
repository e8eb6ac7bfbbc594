"""Property-based API testing with schemathesis against the app's own OpenAPI schema, over real
HTTP: generated requests (valid and invalid) never get a 5xx, and every response matches what
the schema documents (status code, content type, headers, body). Keys are required, so every
operation that declares a scope must also refuse a request without one."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.images import jpeg_bytes
from tests.support.keys import add_key
from tests.support.live_server import live_server

EXAMPLES_PER_OPERATION = 20


async def test_every_operation_matches_its_schema_and_never_fails(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    app_settings, url = await settings_on_new_database(
        create_database, tmp_path, "schemathesis", AUTH_REQUIRED=True
    )
    with live_server(app_settings) as base_url:
        key = {"X-API-Key": await add_key(url, "schemathesis", "admin")}
        async with httpx.AsyncClient(base_url=base_url, headers=key) as client:
            # Something stored, so the image routes are exercised beyond their 404s.
            await client.post("/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes())})
        schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result  # the schema itself must be valid
            operations.append(result.ok())
        assert len(operations) >= 10

        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case[Any]) -> None:
                # A schema-valid upload may still be no image at all: a 4xx there is right.
                case.call_and_validate(
                    base_url=base_url, headers=key, excluded_checks=[positive_data_acceptance]
                )

            await asyncio.to_thread(check)
