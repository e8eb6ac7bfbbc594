"""Similarity search with pgvector."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.image import Image
from app.services.errors import EmbeddingOutdated, ImageNotFound

# The inner query orders by the distance operator and limits, which is the shape the HNSW index
# (vector_cosine_ops) can serve; the threshold and the exclusion of the query image are applied
# outside it, so a threshold that nothing meets never turns into a scan of the whole index.
_NEAREST_SQL = """
WITH nearest AS MATERIALIZED (
    SELECT id, filename, content_type, upload_timestamp,
           embedding_vector <=> :query_vector AS distance
    FROM images
    WHERE embedding_model = :model
    ORDER BY embedding_vector <=> :query_vector
    LIMIT :candidates
)
SELECT id, filename, content_type, upload_timestamp, distance
FROM nearest
WHERE id <> :query_id AND distance <= :max_distance
ORDER BY distance, id
LIMIT :limit
"""
# hnsw.ef_search bounds how many neighbours one index scan can return (default 40).
_MIN_EF_SEARCH = 40
# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SimilarMatch:
    id: uuid.UUID
    filename: str
    content_type: str
    upload_timestamp: datetime
    similarity_score: float


async def find_similar_images(
    session: AsyncSession, image_id: uuid.UUID, *, model: str, limit: int, threshold: float
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

    candidates = limit + 1  # the query image is normally its own nearest neighbour
    await session.execute(
        text("SELECT set_config('hnsw.ef_search', :ef_search, true)"),
        {"ef_search": str(max(_MIN_EF_SEARCH, candidates))},
    )
    statement = text(_NEAREST_SQL).bindparams(
        bindparam("query_vector", type_=Vector(len(query_vector)))
    )
    rows = await session.execute(
        statement,
        {
            "query_vector": query_vector,
            "model": model,
            "candidates": candidates,
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
