"""Similarity search with pgvector: by a stored image, or by an uploaded one."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Literal

import asyncpg
import numpy as np
from numpy.typing import NDArray

from app.core.config import VectorIndexConfig
from app.core.database import SearchConnection
from app.core.vector_index import indexed_expression, query_expression
from app.services.errors import EmbeddingOutdated, ImageNotFound

# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6

Match = Literal["exact", "near_duplicate", "similar"]


def _nearest(config: VectorIndexConfig, vector: str) -> str:
    """Nearest neighbours of `vector` among embeddings of model $2, at most $3 of them.

    Ordered by the distance operator and limited: the shape the vector index can serve. Any
    threshold applies outside this, so one that nothing meets never turns into a scan of the
    whole index."""
    distance = f"{indexed_expression(config)} <=> {query_expression(config, vector)}"
    return f"""
        SELECT id, filename, content_type, upload_timestamp, content_hash, {distance} AS distance
        FROM images
        WHERE embedding_model = $2
        ORDER BY {distance}
        LIMIT $3
    """  # noqa: S608 - fixed expressions only; values are bound parameters


@cache
def nearest_images_sql(config: VectorIndexConfig) -> str:
    """Search by a stored image, in one statement (one round trip).

    $1 query image id, $2 model, $3 candidates, $4 largest distance, $5 limit. One row per
    match, each carrying the query image's model and hash; a single row of NULL matches when
    nothing passes; no row at all when the query image does not exist."""
    return f"""
        WITH query AS (
            SELECT embedding_vector, embedding_model, content_hash FROM images WHERE id = $1
        ), nearest AS MATERIALIZED ({_nearest(config, "(SELECT embedding_vector FROM query)")})
        SELECT query.embedding_model AS query_model, query.content_hash AS query_hash, match.*
        FROM query LEFT JOIN LATERAL (
            SELECT * FROM nearest
            WHERE id <> $1 AND distance <= $4
            ORDER BY distance, id
            LIMIT $5
        ) AS match ON true
        """  # noqa: S608


@cache
def nearest_to_vector_sql(config: VectorIndexConfig) -> str:
    """Search by a vector: $1 the vector (text), $2 model, $3 limit, $4 largest distance."""
    vector = f"CAST($1 AS vector({config.dimension}))"
    return f"""
        WITH nearest AS MATERIALIZED ({_nearest(config, vector)})
        SELECT * FROM nearest WHERE distance <= $4 ORDER BY distance, id
        """  # noqa: S608


def vector_text(vector: NDArray[np.float32]) -> str:
    """pgvector's text form, `[0.1,0.2,...]`. Nine significant digits give back every float32
    exactly; measured 0.1 ms for 512 values against 0.24 ms for pgvector's own encoder."""
    return "[" + ",".join([f"{value:.9g}" for value in vector.tolist()]) + "]"


@dataclass(frozen=True)
class SearchOptions:
    model: str  # only embeddings of this model are compared
    limit: int
    threshold: float  # lowest cosine similarity returned
    near_duplicate_threshold: float
    index: VectorIndexConfig


@dataclass(frozen=True)
class SimilarMatch:
    id: uuid.UUID
    filename: str
    content_type: str
    upload_timestamp: datetime
    similarity_score: float
    match: Match


def _matches(
    rows: Sequence[asyncpg.Record], *, query_hash: str | None, near_duplicate_threshold: float
) -> list[SimilarMatch]:
    found = []
    for row in rows:
        if row["id"] is None:
            continue
        score = max(-1.0, min(1.0, 1.0 - row["distance"]))
        label: Match = (
            "exact"
            if row["content_hash"] == query_hash
            else "near_duplicate"
            if score >= near_duplicate_threshold
            else "similar"
        )
        found.append(
            SimilarMatch(
                id=row["id"],
                filename=row["filename"],
                content_type=row["content_type"],
                upload_timestamp=row["upload_timestamp"],
                similarity_score=score,
                match=label,
            )
        )
    return found


async def find_similar_images(
    connection: SearchConnection, image_id: uuid.UUID, options: SearchOptions
) -> list[SimilarMatch]:
    """The stored images most similar to `image_id` (cosine similarity >= threshold), best first,
    never including the query image itself."""
    rows = await connection.fetch(
        nearest_images_sql(options.index),
        image_id,
        options.model,
        options.limit + 1,  # the query image is normally its own nearest neighbour
        1.0 - options.threshold + _SCORE_TOLERANCE,
        options.limit,
    )
    if not rows:
        raise ImageNotFound(image_id)
    if rows[0]["query_model"] != options.model:
        raise EmbeddingOutdated(image_id, rows[0]["query_model"], options.model)
    return _matches(
        rows,
        query_hash=rows[0]["query_hash"],
        near_duplicate_threshold=options.near_duplicate_threshold,
    )


async def find_images_like(
    connection: SearchConnection,
    vector: NDArray[np.float32],
    content_hash: str,
    options: SearchOptions,
) -> list[SimilarMatch]:
    """The stored images most similar to an image that is not stored (its vector and hash)."""
    rows = await connection.fetch(
        nearest_to_vector_sql(options.index),
        vector_text(vector),
        options.model,
        options.limit,
        1.0 - options.threshold + _SCORE_TOLERANCE,
    )
    return _matches(
        rows, query_hash=content_hash, near_duplicate_threshold=options.near_duplicate_threshold
    )
