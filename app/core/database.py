"""The one way to PostgreSQL: one engine, one pool, one connection per request.

Requests get an `AsyncConnection` of the engine's pool in autocommit mode, so a read costs its
own round trips only (no BEGIN and ROLLBACK around it). Writes run inside `transaction()`.
Statements are SQLAlchemy Core: no ORM session on the request path.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
from sqlalchemy import URL, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from starlette.concurrency import run_in_threadpool

from app.core.config import DEFAULT_STATEMENT_TIMEOUT_SECONDS, Settings
from app.core.embedded_postgres import EmbeddedPostgres, ensure_database, watched
from app.core.vector_index import IndexStatus, ensure_vector_index, schema_lock, search_settings
from app.errors import SchemaMismatch

logger = logging.getLogger(__name__)

INIT_SQL_PATH = Path(__file__).resolve().parents[2] / "init.sql"

# Fail fast when PostgreSQL is unreachable or stalled instead of hanging requests: a connection
# attempt and a wait for a pooled connection get this long each; statements get
# DB_STATEMENT_TIMEOUT. Connecting to a local or nearby server takes milliseconds.
CONNECT_TIMEOUT_SECONDS = 2.0

DatabaseMode = Literal["embedded", "external"]


def database_mode(settings: Settings) -> DatabaseMode:
    """Whether the service runs a PostgreSQL of its own (DATABASE_URL unset) or uses one."""
    return "external" if settings.external_database_url() else "embedded"


def create_engine(
    url: URL,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    server_settings: dict[str, str] | None = None,
    statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> AsyncEngine:
    """An engine whose connections are in autocommit mode until `transaction()` says otherwise.

    `server_settings` are set on every connection at connect time (the index scan settings).
    `statement_timeout` (seconds) bounds every statement twice: PostgreSQL cancels it
    (`statement_timeout`) and the client stops waiting (asyncpg's `command_timeout`), which is
    what still holds when the server is stalled; None is for maintenance work that may take
    minutes (schema changes, index builds)."""
    engine = create_async_engine(
        url,
        # Set once per new connection; switching per checkout costs CPU on every request.
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args={
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "command_timeout": statement_timeout,
            "server_settings": {
                "statement_timeout": str(round((statement_timeout or 0) * 1000)),
                "application_name": "image-similarity-service",
                **(server_settings or {}),
            },
        },
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed_connection)
    event.listen(engine.sync_engine, "handle_error", _discard_on_client_timeout)
    event.listen(engine.sync_engine, "invalidate", _close_at_once)
    return engine


def _discard_closed_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Connections the server closed (a restart) are replaced at checkout, at no cost.

    Cheaper than `pool_pre_ping`, which pays a round trip on every checkout (as much as a whole
    similarity search, `bench.search`): asyncpg notices the closed socket by itself."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server")


def _discard_on_client_timeout(context: ExceptionContext) -> None:
    """A statement the client gave up on (asyncpg's TimeoutError) got no answer, not even the
    server's own cancellation at the same deadline: the server is stalled or out of reach.
    Its connection is discarded rather than rolled back, which would wait as long again."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def _close_at_once(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
    """A discarded connection is closed at once. SQLAlchemy would first try a polite close,
    which waits two seconds for a stalled server to answer; PostgreSQL cleans up after a
    closed socket by itself."""
    dbapi_connection.driver_connection.terminate()


def _in_autocommit(connection: AsyncConnection) -> bool:
    sync = connection.sync_connection
    if sync is None or sync.connection.dbapi_connection is None:
        return False
    return sync.dialect.detect_autocommit_setting(sync.connection.dbapi_connection)


@asynccontextmanager
async def transaction(connection: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Run the block as one transaction: committed when it ends, rolled back on an error.

    On an autocommit connection (every connection of the engine) this is BEGIN ... COMMIT, and
    the connection is back in autocommit mode afterwards. On a connection that already runs a
    transaction of its caller (a test's, rolled back at its end) the block is a SAVEPOINT."""
    if not _in_autocommit(connection):
        async with connection.begin_nested():
            yield connection
        return
    if connection.in_transaction():
        # SQLAlchemy's record of earlier autocommit statements; nothing is sent to the server.
        await connection.commit()
    await connection.execution_options(isolation_level="READ COMMITTED")
    try:
        async with connection.begin():
            yield connection
    finally:
        # A discarded connection (the server went away) goes back to the pool to be replaced;
        # changing its options would reconnect first.
        if not connection.invalidated:
            await connection.execution_options(isolation_level="AUTOCOMMIT")


# asyncpg's errors for lost or refused connections, a server shutting down or starting up, and
# statements cut short (statement_timeout).
_UNAVAILABLE_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
)
UNAVAILABLE_EXCEPTIONS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    DisconnectionError,
    OSError,
    TimeoutError,
    # Raised by asyncpg itself while connecting (e.g. "the database system is starting up").
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means PostgreSQL could not be reached or did not answer in time (a 503),
    rather than a fault in the statement (a bug: a 500)."""
    if isinstance(exc, (PoolTimeoutError, DisconnectionError, OSError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return any(
            isinstance(cause, (*_UNAVAILABLE_ERRORS, OSError, TimeoutError))
            for cause in driver_errors(exc)
        )
    return isinstance(exc, _UNAVAILABLE_ERRORS)


def driver_errors(error: DBAPIError) -> tuple[BaseException | None, ...]:
    """The errors behind SQLAlchemy's: the adapter's, and asyncpg's own (the adapter's cause)."""
    return (error.orig, error.orig.__cause__ if error.orig else None)


async def apply_schema(engine: AsyncEngine, *, embedding_dimension: int) -> None:
    """Apply init.sql (idempotent) and check that its vector column has the configured size.

    Raises SchemaMismatch when the stored column's dimension differs."""
    schema_sql = INIT_SQL_PATH.read_text()
    async with schema_lock(engine) as connection:
        # A script of several statements needs the simple query protocol (PostgreSQL runs it
        # as one transaction), which only asyncpg's own `execute` without arguments speaks.
        raw = await connection.get_raw_connection()
        await raw.driver_connection.execute(schema_sql)  # type: ignore[union-attr]
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


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    url: URL


@asynccontextmanager
async def open_database(
    settings: Settings, *, prepare_index: bool = True
) -> AsyncIterator[Database]:
    """The configured PostgreSQL (the embedded one started if DATABASE_URL is unset), with the
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
            statement_timeout=settings.DB_STATEMENT_TIMEOUT,
        )
        stack.push_async_callback(engine.dispose)
        async with maintenance_engine(url) as maintenance:
            await apply_schema(maintenance, embedding_dimension=settings.EMBEDDING_DIMENSION)
        if prepare_index:
            await prepare_vector_index(url, settings)
        yield Database(engine, url)


@asynccontextmanager
async def maintenance_engine(url: URL) -> AsyncIterator[AsyncEngine]:
    """One connection without statement timeouts, for work that may take minutes (a schema
    change on a large table, an index build)."""
    engine = create_engine(url, pool_size=1, max_overflow=0, statement_timeout=None)
    try:
        yield engine
    finally:
        await engine.dispose()


async def prepare_vector_index(
    url: URL, settings: Settings, *, rebuild: bool = False
) -> IndexStatus:
    """Build or check the vector index (on a maintenance connection)."""
    async with maintenance_engine(url) as maintenance:
        status = await ensure_vector_index(maintenance, settings.vector_index, rebuild=rebuild)
    logger.info("vector index %s: %s", status.action, status.definition or "none")
    return status
