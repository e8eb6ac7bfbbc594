"""Database checks for the health endpoints."""

import asyncio
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.vector_index import describe_vector_index
from app.services.images import count_by_model

CHECK_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class DatabaseStatus:
    available: bool
    server_version: str | None = None
    pgvector_version: str | None = None
    image_count: int | None = None
    images_by_model: dict[str, int] | None = None
    vector_index: str | None = None
    error: str | None = None


async def ping_database(session: AsyncSession) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await session.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
    return True


async def inspect_database(session: AsyncSession) -> DatabaseStatus:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            server_version = await session.scalar(text("SHOW server_version"))
            pgvector_version = await session.scalar(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
            images_by_model = await count_by_model(session)
            vector_index = await describe_vector_index(await session.connection())
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
