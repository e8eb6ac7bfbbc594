"""Similarity search with pgvector."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import VectorIndexConfig
from app.core.vector_index import indexed_expression, query_expression
from app.services.errors import EmbeddingOutdated, ImageNotFound

# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6


@cache
def nearest_images_sql(config: VectorIndexConfig) -> str:
    """The whole search in one statement (one round trip).

    `query` finds the query image's vector and model. `nearest` orders by the distance operator
    and limits: the shape the vector index can serve (the vector is an InitPlan parameter). The
    threshold and the exclusion of the query image apply outside it, so a threshold that nothing
    meets never turns into a scan of the whole index. One row per match, each carrying the
    query image's model; a single row of NULL matches when nothing passes; no row at all when
    the query image does not exist.

    Parameters: $1 query image id, $2 model, $3 candidates, $4 largest distance, $5 limit.
    """
    distance = f"{indexed_expression(config)} <=> {query_expression(config)}"
    # Only fixed expressions are formatted in; every value is a bound parameter.
    return f"""
        WITH query AS (
            SELECT embedding_vector, embedding_model FROM images WHERE id = $1
        ), nearest AS MATERIALIZED (
            SELECT id, filename, content_type, upload_timestamp, {distance} AS distance
            FROM images
            WHERE embedding_model = $2
            ORDER BY {distance}
            LIMIT $3
        )
        SELECT query.embedding_model AS query_model, match.*
        FROM query LEFT JOIN LATERAL (
            SELECT * FROM nearest
            WHERE id <> $1 AND distance <= $4
            ORDER BY distance, id
            LIMIT $5
        ) AS match ON true
        """  # noqa: S608


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
    # Straight through asyncpg on the session's own connection (and transaction): this is the
    # hot path, and SQLAlchemy's statement handling costs a sizeable share of a search here.
    connection = await (await session.connection()).get_raw_connection()
    rows = await connection.driver_connection.fetch(  # type: ignore[union-attr]
        nearest_images_sql(index),
        image_id,
        model,
        limit + 1,  # one more than asked: the query image is normally its own nearest neighbour
        1.0 - threshold + _SCORE_TOLERANCE,
        limit,
    )
    if not rows:
        raise ImageNotFound(image_id)
    if rows[0]["query_model"] != model:
        raise EmbeddingOutdated(image_id, rows[0]["query_model"], model)
    return [
        SimilarMatch(
            id=row["id"],
            filename=row["filename"],
            content_type=row["content_type"],
            upload_timestamp=row["upload_timestamp"],
            similarity_score=max(-1.0, min(1.0, 1.0 - row["distance"])),
        )
        for row in rows
        if row["id"] is not None
    ]
