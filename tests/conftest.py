"""Fixtures: a real PostgreSQL + pgvector (embedded, or TEST_DATABASE_URL), one rolled-back
transaction per test, and the app served in-process through httpx's ASGITransport."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.config import Settings
from app.core.database import (
    apply_schema,
    create_engine,
    driver_connection,
    get_read_session,
    get_search_connection,
    get_session,
    get_transactions,
)
from app.core.embedded_postgres import EmbeddedPostgres, ensure_database
from app.core.vector_index import ensure_vector_index, search_settings
from app.main import create_app

TEST_DATABASE = "image_processing_test"


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq DSN for a PostgreSQL server the tests may create databases on."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield make_url(external).set(drivername="postgresql").render_as_string(hide_password=False)
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "pgdata")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def create_database(server_dsn: str) -> "DatabaseFactory":
    return DatabaseFactory(server_dsn)


class DatabaseFactory:
    """Creates fresh, empty databases on the test server."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn

    async def __call__(self, name: str) -> URL:
        import asyncpg

        connection = await asyncpg.connect(self.server_dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
        return await ensure_database(self.server_dsn, name)


@pytest.fixture(scope="session")
async def database_url(create_database: DatabaseFactory) -> URL:
    return await create_database(TEST_DATABASE)


@pytest.fixture(scope="session")
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    """The test database, prepared as the service prepares its own (default settings)."""
    index = Settings.model_validate({}).vector_index
    engine = create_engine(database_url, server_settings=search_settings(index))
    await apply_schema(engine, embedding_dimension=512)
    await ensure_vector_index(engine, index)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside an outer transaction that is rolled back after the test, so the
    services' own commits (savepoints here) never leak between tests."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        # SQLAlchemy's asyncpg adapter starts the transaction at the first statement; start it
        # now, so that what the services send through asyncpg itself runs inside it too.
        await connection.exec_driver_sql("SELECT 1")
        session = AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for tests: nothing read from .env or the environment's DATABASE_URL."""
    values: dict[str, object] = {"DATA_DIR": tmp_path / "data", "DATABASE_URL": None}
    values.update(overrides)
    return Settings.model_validate(values)


async def settings_on_new_database(
    create_database: "DatabaseFactory", tmp_path: Path, name: str, **overrides: object
) -> tuple[Settings, URL]:
    """Settings for an app on a fresh, empty database `name` of the test server."""
    url = await create_database(name)
    database_url = url.render_as_string(hide_password=False)
    return make_settings(tmp_path, DATABASE_URL=database_url, **overrides), url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def build_app(settings: Settings, session: AsyncSession) -> FastAPI:
    app = create_app(settings)

    async def override_session() -> AsyncIterator[AsyncSession]:
        yield session

    app.dependency_overrides[get_session] = override_session
    app.dependency_overrides[get_read_session] = override_session

    async def override_search_connection() -> AsyncIterator[asyncpg.Connection]:
        yield await driver_connection(await session.connection())

    app.dependency_overrides[get_search_connection] = override_search_connection
    app.dependency_overrides[get_transactions] = lambda: SavepointTransactions(session)
    app.state.image_store.prepare()
    return app


class SavepointTransactions:
    """The services' write transactions as savepoints of the test's own transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        driver = await driver_connection(await self.session.connection())
        assert driver.is_in_transaction()  # so this is a savepoint, rolled back with the test
        async with driver.transaction():
            yield driver


@pytest.fixture
def app(settings: Settings, session: AsyncSession) -> FastAPI:
    return build_app(settings, session)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        yield client
