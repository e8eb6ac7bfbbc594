"""Engine, sessions and the schema from init.sql."""

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import Request
from sqlalchemy import URL, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.embedded_postgres import EmbeddedPostgres, ensure_database, watched
from app.core.vector_index import (
    IndexStatus,
    ensure_vector_index,
    schema_lock,
    search_settings,
)
from app.services.errors import SchemaMismatch

logger = logging.getLogger(__name__)

INIT_SQL_PATH = Path(__file__).resolve().parents[2] / "init.sql"

# Fail fast when PostgreSQL is unreachable or stalled instead of hanging requests: a connection
# attempt, a wait for a pooled connection and any statement get a few seconds each. The
# statement timeout is enforced by the client too, so it holds when the server is stalled.
CONNECT_TIMEOUT_SECONDS = 5
COMMAND_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 10_000
# What searches run on: a search-pool connection (or, in tests, one inside a transaction).
SearchConnection = asyncpg.Connection | PoolConnectionProxy


def create_engine(
    url: URL,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    server_settings: dict[str, str] | None = None,
    command_timeout: float | None = COMMAND_TIMEOUT_SECONDS,
) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args=_connect_arguments(server_settings, command_timeout),
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed_connection)
    return engine


def _connect_arguments(
    server_settings: dict[str, str] | None, command_timeout: float | None
) -> dict[str, Any]:
    """asyncpg's connection arguments, the same for the engine and the search pool."""
    return {
        "timeout": CONNECT_TIMEOUT_SECONDS,
        "command_timeout": command_timeout,
        "server_settings": {
            "statement_timeout": str(STATEMENT_TIMEOUT_MS if command_timeout else 0),
            "application_name": "image-similarity-service",
            **(server_settings or {}),
        },
    }


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """Searches change no session state (no SET, LISTEN, locks or cursors), so a connection
    goes back to the pool as it is. asyncpg's default reset costs a round trip per release;
    an open transaction is still rolled back by asyncpg itself."""


@asynccontextmanager
async def open_search_pool(url: URL, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A plain asyncpg pool (autocommit) for the similarity searches, the hot path.

    Checking a connection out of SQLAlchemy's pool and back in costs about 0.1 ms of CPU per
    request (measured), a sizeable share of a search. Bounded by DB_POOL_SIZE; a connection the
    server closed is replaced when it is next acquired."""
    pool = await asyncpg.create_pool(
        url.set(drivername="postgresql").render_as_string(hide_password=False),
        min_size=1,
        max_size=settings.DB_POOL_SIZE,
        reset=_keep_session_state,
        **_connect_arguments(search_settings(settings.vector_index), COMMAND_TIMEOUT_SECONDS),
    )
    try:
        yield pool
    finally:
        await pool.close()


def _discard_closed_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Connections the server closed (a restart) are replaced at checkout, at no cost.

    Cheaper than `pool_pre_ping`, which pays a round trip on every checkout (measured here:
    0.25 to 0.45 ms, as much as a whole similarity search): asyncpg notices the closed socket
    by itself, so asking it is enough."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server")


async def driver_connection(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy one, inside its transaction if one is open."""
    raw = await connection.get_raw_connection()
    return cast(asyncpg.Connection, raw.driver_connection)


class Transactions(Protocol):
    """Opens a write transaction on a plain asyncpg connection (committed when the block ends
    without an error, rolled back otherwise)."""

    def transaction(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...


class PoolTransactions:
    """Write transactions on connections of the engine's pool, through asyncpg itself.

    What uploads write with: SQLAlchemy's session, ORM and statement handling cost more event-
    loop CPU than the statements do (measured: about a millisecond per upload), and the pool
    stays the one the other requests use, apart from the searches'."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.engine.connect() as connection:
            driver = await driver_connection(connection)
            async with driver.transaction():
                yield driver


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def apply_schema(engine: AsyncEngine, *, embedding_dimension: int) -> None:
    """Apply init.sql (idempotent) and check that its vector column has the configured size."""
    schema_sql = INIT_SQL_PATH.read_text()
    async with schema_lock(engine) as connection:
        # asyncpg runs a multi-statement script through the simple query protocol, which
        # PostgreSQL runs as one transaction.
        await (await driver_connection(connection)).execute(schema_sql)
        stored_dimension = await connection.scalar(
            text(
                "SELECT atttypmod FROM pg_attribute "
                "WHERE attrelid = 'images'::regclass AND attname = 'embedding_vector'"
            )
        )
    if stored_dimension != embedding_dimension:
        raise SchemaMismatch(
            f"The images table stores {stored_dimension}-dimensional vectors but "
            f"EMBEDDING_DIMENSION is {embedding_dimension}. They must agree: change the vector(N) "
            "column in init.sql and start on a new database, or keep the stored dimension"
        )


@asynccontextmanager
async def open_database(
    settings: Settings, *, prepare_index: bool = True
) -> AsyncIterator[AsyncEngine]:
    """The configured PostgreSQL (embedded one started if DATABASE_URL is unset), with the
    schema applied and (unless told otherwise) the vector index in place. Everything started
    here is stopped on exit."""
    async with AsyncExitStack() as stack:
        url = settings.external_database_url()
        if url is None:
            embedded = EmbeddedPostgres(settings.embedded_pgdata_dir)
            server_dsn = await run_in_threadpool(embedded.start)
            stack.push_async_callback(run_in_threadpool, embedded.stop)
            url = await ensure_database(server_dsn, settings.POSTGRES_DB)
            await stack.enter_async_context(watched(embedded))
        engine = create_engine(
            url,
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=settings.DB_MAX_OVERFLOW,
            server_settings=search_settings(settings.vector_index),
        )
        stack.push_async_callback(engine.dispose)
        await apply_schema(engine, embedding_dimension=settings.EMBEDDING_DIMENSION)
        if prepare_index:
            await prepare_vector_index(url, settings)
        yield engine


async def prepare_vector_index(
    url: URL, settings: Settings, *, rebuild: bool = False
) -> IndexStatus:
    """Build or check the vector index, on a connection without statement timeouts (a build
    can take minutes)."""
    maintenance = create_engine(url, pool_size=1, max_overflow=0, command_timeout=None)
    try:
        status = await ensure_vector_index(maintenance, settings.vector_index, rebuild=rebuild)
    finally:
        await maintenance.dispose()
    logger.info("vector index %s: %s", status.action, status.definition or "none")
    return status


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool for requests that only read: autocommit, so a read costs its own round
    trips only (no BEGIN and ROLLBACK around it)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


async def get_search_connection(request: Request) -> AsyncIterator[SearchConnection]:
    """A connection of the search pool; waits CONNECT_TIMEOUT_SECONDS at most (then 503)."""
    pool: asyncpg.Pool = request.app.state.search_pool
    async with pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS) as connection:
        yield connection


async def get_transactions(request: Request) -> Transactions:
    transactions: Transactions = request.app.state.transactions
    return transactions


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with sessionmaker() as session:
        yield session
