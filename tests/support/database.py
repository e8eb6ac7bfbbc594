"""The `images` table read and written directly, for setting up and checking tests."""

import uuid

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models.image import images
from bench.corpus import synthetic_row


async def row_count(connection: AsyncConnection) -> int:
    return await connection.scalar(select(func.count()).select_from(images)) or 0


async def image_row(
    connection: AsyncConnection, image_id: str | uuid.UUID
) -> Row[tuple[object, ...]] | None:
    """The whole row of an image (vector included), or None."""
    query = select(images).where(images.c.id == uuid.UUID(str(image_id)))
    return (await connection.execute(query)).one_or_none()


async def insert_image(
    connection: AsyncConnection, vector: NDArray[np.float32], *, model: str
) -> uuid.UUID:
    """Store a row for `vector` alone (no file), as the search benchmark does."""
    row = synthetic_row(vector, model=model)
    await connection.execute(insert(images).values(row))
    return row["id"]
