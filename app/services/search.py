"""Similarity search with pgvector: by a stored image (`/similar`), or by an uploaded one
(`/search`).

The hot path: each search is one statement in asyncpg's own SQL (`$n` parameters) run with
`exec_driver_sql`, which skips SQLAlchemy's statement compilation and parameter processing
(`bench.search` measures what is left against asyncpg alone)."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import VectorIndexConfig
from app.core.resources import SearchDefaults
from app.core.vector_index import indexed_expression, query_expression, vector_text
from app.errors import EmbeddingOutdated, ImageNotFound

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
        """  # noqa: S608 - fixed expressions only; values are bound parameters


@cache
def nearest_to_vector_sql(config: VectorIndexConfig) -> str:
    """Search by a vector: $1 the vector (pgvector's text form), $2 model, $3 limit, $4 largest
    distance."""
    vector = f"CAST($1 AS vector({config.dimension}))"
    return f"""
        WITH nearest AS MATERIALIZED ({_nearest(config, vector)})
        SELECT * FROM nearest WHERE distance <= $4 ORDER BY distance, id
        """  # noqa: S608


@dataclass(frozen=True)
class SearchOptions:
    model: str  # only embeddings of this model are compared
    limit: int
    threshold: float  # lowest cosine similarity returned
    near_duplicate_threshold: float
    index: VectorIndexConfig

    @classmethod
    def for_request(
        cls, defaults: SearchDefaults, model: str, limit: int | None, threshold: float | None
    ) -> "SearchOptions":
        """The request's limit and threshold, the defaults where it gives none."""
        return cls(
            model=model,
            limit=defaults.limit if limit is None else limit,
            threshold=defaults.threshold if threshold is None else threshold,
            near_duplicate_threshold=defaults.near_duplicate_threshold,
            index=defaults.index,
        )


@dataclass(frozen=True)
class SimilarMatch:
    id: uuid.UUID
    filename: str
    content_type: str
    upload_timestamp: datetime
    similarity_score: float
    match: Match


def _matches(
    rows: Sequence[Row[tuple[object, ...]]],
    *,
    query_hash: str | None,
    near_duplicate_threshold: float,
) -> list[SimilarMatch]:
    found = []
    for row in rows:
        match = row._mapping
        if match["id"] is None:
            continue
        score = max(-1.0, min(1.0, 1.0 - match["distance"]))
        label: Match = (
            "exact"
            if match["content_hash"] == query_hash
            else "near_duplicate"
            if score >= near_duplicate_threshold
            else "similar"
        )
        found.append(
            SimilarMatch(
                id=match["id"],
                filename=match["filename"],
                content_type=match["content_type"],
                upload_timestamp=match["upload_timestamp"],
                similarity_score=score,
                match=label,
            )
        )
    return found


async def find_similar_images(
    connection: AsyncConnection, image_id: uuid.UUID, options: SearchOptions
) -> list[SimilarMatch]:
    """The stored images most similar to `image_id` (cosine similarity >= threshold), best first,
    never including the query image itself. Raises ImageNotFound, EmbeddingOutdated."""
    result = await connection.exec_driver_sql(
        nearest_images_sql(options.index),
        (
            image_id,
            options.model,
            options.limit + 1,  # the query image is normally its own nearest neighbour
            1.0 - options.threshold + _SCORE_TOLERANCE,
            options.limit,
        ),
    )
    rows = result.all()
    if not rows:
        raise ImageNotFound(image_id)
    query_model = rows[0].query_model
    if query_model != options.model:
        raise EmbeddingOutdated(image_id, query_model, options.model)
    return _matches(
        rows,
        query_hash=rows[0].query_hash,
        near_duplicate_threshold=options.near_duplicate_threshold,
    )


async def search_by_image(
    connection: AsyncConnection,
    vector: NDArray[np.float32],
    content_hash: str,
    options: SearchOptions,
) -> list[SimilarMatch]:
    """The stored images most similar to an image that is not stored (its vector and hash)."""
    result = await connection.exec_driver_sql(
        nearest_to_vector_sql(options.index),
        (
            vector_text(vector),
            options.model,
            options.limit,
            1.0 - options.threshold + _SCORE_TOLERANCE,
        ),
    )
    return _matches(
        result.all(),
        query_hash=content_hash,
        near_duplicate_threshold=options.near_duplicate_threshold,
    )
