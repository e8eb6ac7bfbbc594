"""The `images` and `image_regions` tables read and written directly, for setting up and
checking tests."""

import uuid

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models.image import image_regions, images
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


async def region_models(connection: AsyncConnection, image_id: str | uuid.UUID) -> list[str]:
    """The model of each region vector of an image, in region order (none: [])."""
    query = (
        select(image_regions.c.embedding_model)
        .where(image_regions.c.image_id == uuid.UUID(str(image_id)))
        .order_by(image_regions.c.region)
    )
    return list((await connection.execute(query)).scalars())


async def region_scores(
    connection: AsyncConnection, query: str, other: str
) -> tuple[float, float, int]:
    """The cosine similarity of two stored images' global vectors, and the best one of the
    query's global vector with the other's region vectors, with that region's number."""
    row = (
        await connection.execute(
            text(
                "SELECT 1 - (q.embedding_vector <=> o.embedding_vector) AS whole, "
                "1 - (q.embedding_vector <=> r.embedding_vector) AS part, r.region "
                "FROM images q, images o JOIN image_regions r ON r.image_id = o.id "
                "WHERE q.id = :query AND o.id = :other "
                "ORDER BY q.embedding_vector <=> r.embedding_vector LIMIT 1"
            ),
            {"query": uuid.UUID(query), "other": uuid.UUID(other)},
        )
    ).one()
    return float(row.whole), float(row.part), int(row.region)
