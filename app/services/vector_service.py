"""Similarity search with pgvector."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from pgvector.sqlalchemy import Vector
from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import VectorIndexConfig
from app.core.vector_index import indexed_expression, query_expression
from app.models.image import Image
from app.services.errors import EmbeddingOutdated, ImageNotFound

# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6


@cache
def nearest_images_sql(config: VectorIndexConfig) -> TextClause:
    """The search statement. The inner query orders by the distance operator and limits, the
    shape the vector index can serve; the threshold and the exclusion of the query image apply
    outside it, so a threshold that nothing meets never turns into a scan of the whole index."""
    distance = f"{indexed_expression(config)} <=> {query_expression(config)}"
    # Only fixed expressions are formatted in; every value is a bound parameter.
    return text(
        f"""
        WITH nearest AS MATERIALIZED (
            SELECT id, filename, content_type, upload_timestamp, {distance} AS distance
            FROM images
            WHERE embedding_model = :model
            ORDER BY {distance}
            LIMIT :candidates
        )
        SELECT id, filename, content_type, upload_timestamp, distance
        FROM nearest
        WHERE id <> :query_id AND distance <= :max_distance
        ORDER BY distance, id
        LIMIT :limit
        """  # noqa: S608
    ).bindparams(bindparam("query_vector", type_=Vector(config.dimension)))


@dataclass(frozen=True)
class SimilarMatch:
    id: uuid.UUID
    filename: str
    content_type: str
    upload_timestamp: datetime
    similarity_score: float


async def find_similar_images(
    session: AsyncSession,
    image_id: uuid.UUID,
    *,
    model: str,
    limit: int,
    threshold: float,
    index: VectorIndexConfig,
) -> list[SimilarMatch]:
    """The stored images most similar to `image_id` (cosine similarity >= threshold), best first,
    never including the query image itself. Only embeddings of `model` are compared."""
    query = (
        await session.execute(
            select(Image.embedding_vector, Image.embedding_model).where(Image.id == image_id)
        )
    ).one_or_none()
    if query is None:
        raise ImageNotFound(image_id)
    query_vector, query_model = query
    if query_model != model:
        raise EmbeddingOutdated(image_id, query_model, model)

    rows = await session.execute(
        nearest_images_sql(index),
        {
            "query_vector": query_vector,
            "model": model,
            # One more than asked: the query image is normally its own nearest neighbour.
            "candidates": limit + 1,
            "query_id": image_id,
            "max_distance": 1.0 - threshold + _SCORE_TOLERANCE,
            "limit": limit,
        },
    )
    return [
        SimilarMatch(
            id=row.id,
            filename=row.filename,
            content_type=row.content_type,
            upload_timestamp=row.upload_timestamp,
            similarity_score=max(-1.0, min(1.0, 1.0 - float(row.distance))),
        )
        for row in rows
    ]
