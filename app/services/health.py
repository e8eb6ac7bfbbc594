"""Database and storage checks for the health endpoints.

They take the engine, not a request connection: whether a connection can be had at all is what
they report, so acquiring one is part of the check (and of its timeout)."""

import asyncio
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.storage import ImageStore
from app.core.vector_index import describe_vector_index
from app.errors import StorageUnavailable
from app.services.images import count_by_model

# Probes answer within this, whatever state the database or the store is in (readiness must
# within 3 s); the two are checked at the same time.
CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class DatabaseStatus:
    available: bool
    server_version: str | None = None
    pgvector_version: str | None = None
    image_count: int | None = None
    images_by_model: dict[str, int] | None = None
    vector_index: str | None = None
    error: str | None = None


async def ping_database(engine: AsyncEngine) -> bool:
    """Whether a connection can be had and answers, within CHECK_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
    return True


async def ping_store(store: ImageStore) -> bool:
    """Whether the image store answers one cheap request within CHECK_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await store.check()
    except (StorageUnavailable, TimeoutError):
        return False
    return True


async def ping_all(engine: AsyncEngine, store: ImageStore) -> tuple[bool, bool]:
    """(database answers, store answers), checked at the same time."""
    database_ok, store_ok = await asyncio.gather(ping_database(engine), ping_store(store))
    return database_ok, store_ok


async def inspect_database(engine: AsyncEngine) -> DatabaseStatus:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            server_version = await connection.scalar(text("SHOW server_version"))
            pgvector_version = await connection.scalar(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
            images_by_model = await count_by_model(connection)
            vector_index = await describe_vector_index(connection)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        # The class name only: driver messages can carry hosts, paths or SQL.
        return DatabaseStatus(available=False, error=type(exc).__name__)
    return DatabaseStatus(
        available=True,
        server_version=server_version,
        pgvector_version=pgvector_version,
        image_count=sum(images_by_model.values()),
        images_by_model=images_by_model,
        vector_index=vector_index,
    )
