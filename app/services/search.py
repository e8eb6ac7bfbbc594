"""Similarity search with pgvector: by a stored image (`/similar`), or by an uploaded one
(`/search`), in two stages: the vector index proposes candidates, local features verify the
best of them (near-duplicates), unless VERIFY_NEAR_DUPLICATES is off.

The hot path: each search is one statement in asyncpg's own SQL (`$n` parameters) run with
`exec_driver_sql`, which skips SQLAlchemy's statement compilation and parameter processing
(`bench.search` measures what is left against asyncpg alone)."""

import asyncio
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.config import VectorIndexConfig
from app.core.resources import SearchDefaults
from app.core.vector_index import indexed_expression, query_expression, vector_text
from app.errors import EmbeddingOutdated, ImageNotFound
from app.imaging.verification import Evidence, LocalFeatures, verify

# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6

Match = Literal["exact", "near_duplicate", "similar"]
_T = TypeVar("_T")


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


_FEATURES_SQL = "SELECT id, local_features FROM images WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True)
class SearchOptions:
    model: str  # only embeddings of this model are compared
    limit: int
    threshold: float  # lowest cosine similarity returned (verified near-duplicates pass anyway)
    near_duplicate_threshold: float  # the label without verification
    index: VectorIndexConfig
    # How many of the nearest are verified; 0: none (the label then follows the score).
    verification_candidates: int = 0

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
            verification_candidates=defaults.verification_candidates,
        )

    @property
    def candidates(self) -> int:
        """How many nearest neighbours a verified search looks at."""
        return max(self.limit, self.verification_candidates)


@dataclass(frozen=True)
class SimilarMatch:
    id: uuid.UUID
    filename: str
    content_type: str
    upload_timestamp: datetime
    similarity_score: float
    match: Match
    evidence: Evidence | None = None


def _score(row: Row[tuple[object, ...]]) -> float:
    return max(-1.0, min(1.0, 1.0 - float(row._mapping["distance"])))


def _match(
    row: Row[tuple[object, ...]], label: Match, evidence: Evidence | None = None
) -> SimilarMatch:
    match = row._mapping
    return SimilarMatch(
        id=match["id"],
        filename=match["filename"],
        content_type=match["content_type"],
        upload_timestamp=match["upload_timestamp"],
        similarity_score=_score(row),
        match=label,
        evidence=evidence,
    )


def _matches(
    rows: Sequence[Row[tuple[object, ...]]],
    *,
    query_hash: str | None,
    near_duplicate_threshold: float,
) -> list[SimilarMatch]:
    """Labels by score alone (verification off): the statement already applied the threshold
    and the limit."""
    found = []
    for row in rows:
        if row._mapping["id"] is None:
            continue
        score = _score(row)
        label: Match = (
            "exact"
            if row._mapping["content_hash"] == query_hash
            else "near_duplicate"
            if score >= near_duplicate_threshold
            else "similar"
        )
        found.append(_match(row, label))
    return found


def _verified_matches(
    rows: Sequence[Row[tuple[object, ...]]],
    *,
    query_hash: str | None,
    query_features: bytes | None,
    features: dict[uuid.UUID, bytes | None],
    options: SearchOptions,
) -> list[SimilarMatch]:
    """The verification stage, pure and synchronous (run it off the event loop).

    The first `verification_candidates` rows are verified against the query: a verified one is a
    near_duplicate, listed before the others whatever its score; unverified ones are `similar`
    and must reach the threshold. Where either side has no local features (verification was
    off when it was stored), the label falls back to NEAR_DUPLICATE_THRESHOLD."""
    query = _parsed(query_features)
    labelled: list[tuple[int, SimilarMatch]] = []
    for position, row in enumerate(rows):
        image_id = row._mapping["id"]
        if image_id is None:
            continue
        score = _score(row)
        if row._mapping["content_hash"] == query_hash:
            labelled.append((0, _match(row, "exact")))
            continue
        stored = _parsed(features.get(image_id))
        evidence = None
        if position < options.verification_candidates and query is not None and stored:
            evidence = verify(query, stored)
            duplicate = evidence is not None
        else:
            duplicate = score >= options.near_duplicate_threshold
        if duplicate:
            labelled.append((1, _match(row, "near_duplicate", evidence)))
        elif score >= options.threshold - _SCORE_TOLERANCE:
            labelled.append((2, _match(row, "similar")))
    labelled.sort(key=lambda item: (item[0], -item[1].similarity_score, str(item[1].id)))
    return [match for _, match in labelled[: options.limit]]


def _parsed(data: bytes | None) -> LocalFeatures | None:
    """Stored local features, or None when there are none (or they cannot be read: the label
    then falls back to the score rather than failing the search)."""
    if not data:
        return None
    try:
        return LocalFeatures.from_bytes(data)
    except (ValueError, struct.error):
        return None


async def _local_features(
    connection: AsyncConnection, ids: list[uuid.UUID]
) -> dict[uuid.UUID, bytes | None]:
    result = await connection.exec_driver_sql(_FEATURES_SQL, (ids,))
    return {row.id: row.local_features for row in result}


async def find_similar_images(
    connection: AsyncConnection,
    image_id: uuid.UUID,
    options: SearchOptions,
    *,
    slots: asyncio.Semaphore | None = None,
) -> list[SimilarMatch]:
    """The stored images most similar to `image_id` (cosine similarity >= threshold, or verified
    near-duplicates), best first, never including the query image itself. Verification runs in
    a worker thread, holding one of `slots` if given. Raises ImageNotFound, EmbeddingOutdated."""
    verified = options.verification_candidates > 0
    result = await connection.exec_driver_sql(
        nearest_images_sql(options.index),
        (
            image_id,
            options.model,
            (options.candidates if verified else options.limit) + 1,  # the query image itself
            2.0 if verified else 1.0 - options.threshold + _SCORE_TOLERANCE,
            options.candidates if verified else options.limit,
        ),
    )
    rows = result.all()
    if not rows:
        raise ImageNotFound(image_id)
    query_model = rows[0].query_model
    if query_model != options.model:
        raise EmbeddingOutdated(image_id, query_model, options.model)
    query_hash = rows[0].query_hash
    if not verified:
        return _matches(
            rows, query_hash=query_hash, near_duplicate_threshold=options.near_duplicate_threshold
        )
    ids = [row.id for row in rows[: options.verification_candidates] if row.id is not None]
    features = await _local_features(connection, [image_id, *ids])
    return await _off_the_loop(
        slots,
        _verified_matches,
        rows,
        query_hash=query_hash,
        query_features=features.pop(image_id, None),
        features=features,
        options=options,
    )


async def search_by_image(
    connection: AsyncConnection,
    vector: NDArray[np.float32],
    content_hash: str,
    options: SearchOptions,
    *,
    local_features: bytes | None = None,
    slots: asyncio.Semaphore | None = None,
) -> list[SimilarMatch]:
    """The stored images most similar to an image that is not stored (its vector, hash and,
    for verification, its local features)."""
    verified = options.verification_candidates > 0
    result = await connection.exec_driver_sql(
        nearest_to_vector_sql(options.index),
        (
            vector_text(vector),
            options.model,
            options.candidates if verified else options.limit,
            2.0 if verified else 1.0 - options.threshold + _SCORE_TOLERANCE,
        ),
    )
    rows = result.all()
    if not verified:
        return _matches(
            rows, query_hash=content_hash, near_duplicate_threshold=options.near_duplicate_threshold
        )
    ids = [row.id for row in rows[: options.verification_candidates]]
    features = await _local_features(connection, ids) if local_features else {}
    return await _off_the_loop(
        slots,
        _verified_matches,
        rows,
        query_hash=content_hash,
        query_features=local_features,
        features=features,
        options=options,
    )


async def _off_the_loop(
    slots: asyncio.Semaphore | None, function: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    if slots is None:
        return await run_in_threadpool(function, *args, **kwargs)
    async with slots:
        return await run_in_threadpool(function, *args, **kwargs)
