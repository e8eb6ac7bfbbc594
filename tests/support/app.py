"""The app for tests: settings that read nothing from the environment, the app served
in-process with its lifespan, and fresh databases on the test server."""

import atexit
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from app.api.deps import get_connection
from app.core.config import Settings
from app.core.database import Database
from app.core.embedded_postgres import recreate_database
from app.main import create_app

# `make_client(**setting_overrides)`: see the fixture in tests/conftest.py.
MakeClient = Callable[..., AbstractAsyncContextManager[AsyncClient]]


# One model cache for the whole test run: the cnn graph is built once per run, not per test.
# Removed when the run ends (13 MB each).
SHARED_MODEL_DIR = Path(tempfile.mkdtemp(prefix="image-service-test-models-"))
atexit.register(shutil.rmtree, SHARED_MODEL_DIR, ignore_errors=True)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for tests: nothing read from .env or the environment's DATABASE_URL; the model
    cache shared by the run."""
    values: dict[str, object] = {
        "DATA_DIR": tmp_path / "data",
        "DATABASE_URL": None,
        "MODEL_DIR": SHARED_MODEL_DIR,
    }
    values.update(overrides)
    return Settings.model_validate(values)


class DatabaseFactory:
    """Creates fresh, empty databases on the test server."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn

    async def __call__(self, name: str) -> URL:
        return await recreate_database(self.server_dsn, name)


async def settings_on_new_database(
    create_database: DatabaseFactory, tmp_path: Path, name: str, **overrides: object
) -> tuple[Settings, URL]:
    """Settings for an app on a fresh, empty database `name` of the test server, and its URL."""
    url = await create_database(name)
    database_url = url.render_as_string(hide_password=False)
    return make_settings(tmp_path, DATABASE_URL=database_url, **overrides), url


@asynccontextmanager
async def app_client(
    settings: Settings,
    *,
    database: Database | None = None,
    connect: Callable[[], AbstractAsyncContextManager[AsyncConnection]] | None = None,
) -> AsyncIterator[AsyncClient]:
    """An HTTP client of the app served in-process, lifespan included: on `database` when given
    (else the one `settings` configure), its requests' connections from `connect` when given
    (the test's rolled-back transaction, a database that is down)."""
    app = create_app(settings, database=database)
    if connect is not None:
        request_connect = connect

        async def test_connection() -> AsyncIterator[AsyncConnection]:
            async with request_connect() as connection:
                yield connection

        app.dependency_overrides[get_connection] = test_connection
    async with (
        LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager,
        AsyncClient(
            transport=ASGITransport(app=manager.app, raise_app_exceptions=False),
            base_url="http://test",
        ) as client,
    ):
        yield client
