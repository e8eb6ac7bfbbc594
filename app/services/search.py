"""Similarity search with pgvector: by a stored image (`/similar`), or by an uploaded one
(`/search`), in two stages: the vector index proposes candidates, local features verify the
best of them (near-duplicates), unless VERIFY_NEAR_DUPLICATES is off.

The hot path: each search is one statement in asyncpg's own SQL (`$n` parameters) run with
`exec_driver_sql`, which skips SQLAlchemy's statement compilation and parameter processing
(`bench.search` measures what is left against asyncpg alone). A scan that missed what it had
to find is retried wider, then at the index's widest, then exactly; verification works on
the candidates of the final scan."""

import asyncio
import logging
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal, TypeVar

import asyncpg
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.config import VectorIndexConfig
from app.core.database import driver_errors, transaction
from app.core.resources import SearchDefaults
from app.core.vector_index import indexed_expression, query_expression, vector_text
from app.errors import EmbeddingOutdated, ImageNotFound
from app.imaging.verification import Evidence, LocalFeatures, verify

# Float rounding must not drop an exact copy (score 0.9999999) at threshold=1.
_SCORE_TOLERANCE = 1e-6
# Cosine distance is at most 2: a bound that lets every candidate through.
_ANY_DISTANCE = 2.0

# What a stored picture's part (a region vector) scores less than the picture would: a part of
# an unrelated flat or bordered picture is often closer to a query than a noisy copy is.
# Chosen with bench.quality on its own set: the smallest penalty (of 0.02 to 0.25) at which every
# kind of picture that is not a photo ranks its copies as without region vectors (hard-edit mAP
# 0.988, screenshots 0.866, collage tiles 1.000).
REGION_SCORE_PENALTY = 0.12

Match = Literal["exact", "near_duplicate", "similar"]
_T = TypeVar("_T")
logger = logging.getLogger(__name__)


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


def _candidate_scans(config: VectorIndexConfig, vector: str, *, regions: bool) -> str:
    """The common table expressions of a search: `whole`, the nearest images by their global
    vectors (`_nearest`), and `nearest`, the candidates. Without `regions` they are the same;
    with them, `nearest` adds the images whose region vectors (image_regions) are among the
    nearest $3 regions, each image once with its smallest distance (its best score, whether by
    the whole picture or by a part of it, a part's score lowered by REGION_SCORE_PENALTY)."""
    if not regions:
        return f"whole AS MATERIALIZED ({_nearest(config, vector)}), nearest AS (TABLE whole)"
    distance = f"{indexed_expression(config)} <=> {query_expression(config, vector)}"
    return f"""
        whole AS MATERIALIZED ({_nearest(config, vector)}),
        parts AS MATERIALIZED (
            SELECT image_id AS id, ({distance}) + {REGION_SCORE_PENALTY} AS distance
            FROM image_regions
            WHERE embedding_model = $2
            ORDER BY {distance}
            LIMIT $3
        ), best AS (
            SELECT id, min(distance) AS distance
            FROM (SELECT id, distance FROM whole UNION ALL SELECT id, distance FROM parts) AS hits
            GROUP BY id
        ), nearest AS MATERIALIZED (
            SELECT images.id, images.filename, images.content_type, images.upload_timestamp,
                images.content_hash, best.distance
            FROM best JOIN images ON images.id = best.id
        )
    """  # noqa: S608 - fixed expressions only; values are bound parameters


@cache
def nearest_images_sql(config: VectorIndexConfig, *, regions: bool = False) -> str:
    """Search by a stored image, in one statement (one round trip).

    $1 query image id, $2 model, $3 candidates, $4 largest distance, $5 limit. One row per
    match, each carrying the query image's model and hash and whether the index scan found the
    query image itself (`self_found`, by its global vector) and the best other candidate's
    distance whatever the threshold (`best_distance`); a single row of NULL matches when
    nothing passes; no row at all when the query image does not exist. With `regions`, the
    candidates include images found by their region vectors (`_candidate_scans`)."""
    scans = _candidate_scans(config, "(SELECT embedding_vector FROM query)", regions=regions)
    return f"""
        WITH query AS (
            SELECT embedding_vector, embedding_model, content_hash FROM images WHERE id = $1
        ), {scans}
        SELECT query.embedding_model AS query_model, query.content_hash AS query_hash,
            EXISTS (SELECT 1 FROM whole WHERE id = $1) AS self_found,
            (SELECT min(distance) FROM nearest WHERE id <> $1) AS best_distance, match.*
        FROM query LEFT JOIN LATERAL (
            SELECT * FROM nearest
            WHERE id <> $1 AND distance <= $4
            ORDER BY distance, id
            LIMIT $5
        ) AS match ON true
        """  # noqa: S608 - fixed expressions only; values are bound parameters


@cache
def nearest_to_vector_sql(config: VectorIndexConfig, *, regions: bool = False) -> str:
    """Search by a vector: $1 the vector (pgvector's text form), $2 model, $3 limit, $4 largest
    distance, $5 the content hash of the query's bytes. One row per match, each carrying the id
    of a stored image with the same bytes (`stored_copy`, NULL if none) and the best candidate's
    distance whatever the threshold (`best_distance`); a single row of NULL matches when
    nothing passes. With `regions`, the candidates include images found by their region
    vectors (`_candidate_scans`)."""
    vector = f"CAST($1 AS vector({config.dimension}))"
    return f"""
        WITH {_candidate_scans(config, vector, regions=regions)}, copy AS (
            SELECT (
                SELECT id FROM images WHERE content_hash = $5 AND embedding_model = $2
            ) AS stored_copy
        )
        SELECT copy.stored_copy, (SELECT min(distance) FROM nearest) AS best_distance, match.*
        FROM copy LEFT JOIN LATERAL (
            SELECT * FROM nearest WHERE distance <= $4 ORDER BY distance, id
        ) AS match ON true
        """  # noqa: S608


_FEATURES_SQL = "SELECT id, local_features FROM images WHERE id = ANY($1::uuid[])"


def _wider_scans(config: VectorIndexConfig) -> list[dict[str, str]]:
    """The settings of the retries of a search that missed what it had to find, widest last:
    the index scanned `WIDER_SCAN_FACTOR` times wider (ef_search at least
    `WIDER_EF_SEARCH_FLOOR`, or times the probes), then as wide as pgvector goes
    (ef_search 1000, probes times the factor squared), then exactly (no index). Each names the
    setting of `config.kind` only, so two equal steps (ef_search 250 or more: both 1000) are
    equal dicts. In pgvector's graph (HNSW) a greedy scan can stop in a region far from the
    query: the `self_hit` figure of `bench.search` measures how often, and how often each retry
    recovers."""
    if config.kind == "ivfflat":
        wider = {"ivfflat.probes": str(config.ivfflat_probes * WIDER_SCAN_FACTOR)}
        widest = {"ivfflat.probes": str(config.ivfflat_probes * WIDER_SCAN_FACTOR**2)}
    else:
        ef_search = max(WIDER_EF_SEARCH_FLOOR, config.hnsw_ef_search * WIDER_SCAN_FACTOR)
        wider = {"hnsw.ef_search": str(min(MAX_EF_SEARCH, ef_search))}
        widest = {"hnsw.ef_search": str(MAX_EF_SEARCH)}
    return [wider, widest, {"enable_indexscan": "off"}]


# How much wider the first retry scans, and pgvector's largest ef_search.
WIDER_SCAN_FACTOR = 4
WIDER_EF_SEARCH_FLOOR = 400
MAX_EF_SEARCH = 1000


@dataclass(frozen=True)
class SearchOptions:
    model: str  # only embeddings of this model are compared
    limit: int
    threshold: float  # lowest cosine similarity returned (verified near-duplicates pass anyway)
    near_duplicate_threshold: float  # the label without verification
    index: VectorIndexConfig
    # A search whose best candidate scores below this is double-checked with wider scans
    # (SIMILARITY_THRESHOLD: an answer with nothing similar in it).
    recheck_below: float = -1.0
    # How many of the nearest are verified; 0: none (the label then follows the score).
    verification_candidates: int = 0
    # Whether stored images are also found by their region vectors (REGION_VECTORS).
    regions: bool = False
    # How long the exact scan that ends a lost search may take (seconds; None: as long as any
    # statement): past it, the widest index scan's answer stands.
    exact_scan_seconds: float | None = None

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
            recheck_below=defaults.threshold,
            verification_candidates=defaults.verification_candidates,
            regions=defaults.regions,
            exact_scan_seconds=defaults.exact_scan_seconds,
        )

    @property
    def verified(self) -> bool:
        return self.verification_candidates > 0

    @property
    def candidates(self) -> int:
        """How many nearest neighbours the statement returns: the limit, or with verification
        at least VERIFICATION_CANDIDATES (verification then decides which are returned)."""
        return max(self.limit, self.verification_candidates) if self.verified else self.limit

    @property
    def largest_distance(self) -> float:
        """The statement's bound on the distance: the threshold's, or none with verification
        (a verified near-duplicate is returned whatever its score)."""
        return _ANY_DISTANCE if self.verified else 1.0 - self.threshold + _SCORE_TOLERANCE


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
    return max(-1.0, min(1.0, 1.0 - float(row.distance)))


def _match(
    row: Row[tuple[object, ...]], label: Match, evidence: Evidence | None = None
) -> SimilarMatch:
    return SimilarMatch(
        id=row.id,
        filename=row.filename,
        content_type=row.content_type,
        upload_timestamp=row.upload_timestamp,
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
        if row.id is None:
            continue
        score = _score(row)
        label: Match = (
            "exact"
            if row.content_hash == query_hash
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
    for position, row in enumerate(_candidates(rows)):
        score = _score(row)
        if row.content_hash == query_hash:
            labelled.append((0, _match(row, "exact")))
            continue
        stored = _parsed(features.get(row.id))
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


def _candidates(rows: Sequence[Row[tuple[object, ...]]]) -> list[Row[tuple[object, ...]]]:
    """The rows that are matches (not the single row of NULL matches of an empty answer)."""
    return [row for row in rows if row.id is not None]


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


def _similar_found(rows: Sequence[Row[tuple[object, ...]]], options: SearchOptions) -> bool:
    """Whether the scan found a candidate scoring `recheck_below` or more (before the request's
    own threshold is applied)."""
    best = rows[0].best_distance
    return best is not None and 1.0 - best >= options.recheck_below


@dataclass(frozen=True)
class StoredImageSearch:
    """What a search by a stored image did: its rows, whether the final scan found the query
    image among its candidates, how many scans it ran (1 when the first found the image and
    something similar), whether the last of them was the exact scan, and whether every scan it
    started finished (False when the exact scan outlasted `exact_scan_seconds`)."""

    rows: Sequence[Row[tuple[object, ...]]]
    self_found: bool
    scans: int
    exact: bool = False
    complete: bool = True


async def _run(
    connection: AsyncConnection,
    statement: str,
    parameters: tuple[object, ...],
    settings: dict[str, str] | None = None,
) -> Sequence[Row[tuple[object, ...]]]:
    """Run a search statement; with `settings`, in a transaction of its own that sets them for
    that statement only (`set_config(..., is_local => true)`)."""
    if settings is None:
        return (await connection.exec_driver_sql(statement, parameters)).all()
    names, values = list(settings), list(settings.values())
    async with transaction(connection):
        await connection.exec_driver_sql(
            "SELECT "
            + ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(names))),
            tuple(item for pair in zip(names, values, strict=True) for item in pair),
        )
        rows = (await connection.exec_driver_sql(statement, parameters)).all()
        # Back to the connection's own values: inside a caller's transaction (the tests'),
        # `is_local` would otherwise last until that transaction ends.
        await connection.exec_driver_sql(
            "SELECT " + ", ".join(f"set_config(${i + 1}, NULL, true)" for i in range(len(names))),
            tuple(names),
        )
    return rows


def _missed(rows: Sequence[Row[tuple[object, ...]]], image_id: uuid.UUID) -> bool:
    return all(row.id != image_id for row in rows)


async def _run_exact(
    connection: AsyncConnection,
    statement: str,
    parameters: tuple[object, ...],
    settings: dict[str, str],
    options: SearchOptions,
) -> Sequence[Row[tuple[object, ...]]] | None:
    """The exact scan, cut short by PostgreSQL after `options.exact_scan_seconds` (its own
    `statement_timeout`, below the connection's): its rows, or None when it did not finish.
    An exact scan reads every row: at a million images it takes seconds."""
    if options.exact_scan_seconds is None:
        return await _run(connection, statement, parameters, settings)
    bounded = {
        **settings,
        "statement_timeout": str(max(1, round(options.exact_scan_seconds * 1000))),
    }
    try:
        return await _run(connection, statement, parameters, bounded)
    except DBAPIError as error:
        if not _cancelled(error):
            raise
        return None


def _cancelled(error: DBAPIError) -> bool:
    """Whether PostgreSQL cancelled the statement (statement_timeout)."""
    return any(isinstance(cause, asyncpg.QueryCanceledError) for cause in driver_errors(error))


async def search_stored_image(
    connection: AsyncConnection, image_id: uuid.UUID, options: SearchOptions
) -> StoredImageSearch:
    """Search by a stored image, scanning wider when the index scan did not reach the query
    image itself (then its neighbourhood was not reached either: wider, widest, then exactly
    within `exact_scan_seconds`), or found nothing scoring `recheck_below` or more besides it
    (HNSW: wider, then widest, since the image's own links in the graph can lead a scan into
    another cluster; an image that really has no neighbours pays both scans, and the exact one
    only if a wider scan loses the image; IVFFlat: wider once). The rows are
    `options.candidates` at most (all of them, whatever their score, when verification is on).
    Raises ImageNotFound, EmbeddingOutdated."""
    statement = nearest_images_sql(options.index, regions=options.regions)
    parameters = (
        image_id,
        options.model,
        options.candidates + 1,  # the query image is normally its own nearest neighbour
        options.largest_distance,
        options.candidates,
    )
    rows = await _run(connection, statement, parameters)
    if not rows:
        raise ImageNotFound(image_id)
    query_model = rows[0].query_model
    if query_model != options.model:
        raise EmbeddingOutdated(image_id, query_model, options.model)
    scans, exact_scan, complete = 1, False, True
    if options.index.kind != "none":
        wider, widest, exact = _wider_scans(options.index)
        # A scan that found the query image but nothing similar besides is retried wider (in
        # HNSW, up to the widest); one that missed the image itself gets every step until the
        # image is found. At HNSW_EF_SEARCH 250 or more the wider scan is already the widest.
        if not (rows[0].self_found and _similar_found(rows, options)):
            rows = await _run(connection, statement, parameters, wider)
            scans += 1
        lost_in_graph = options.index.kind == "hnsw" and not _similar_found(rows, options)
        if widest != wider and (not rows[0].self_found or lost_in_graph):
            rows = await _run(connection, statement, parameters, widest)
            scans += 1
        if not rows[0].self_found:
            scans, exact_scan = scans + 1, True
            exact_rows = await _run_exact(connection, statement, parameters, exact, options)
            if exact_rows is not None:
                rows = exact_rows
            else:
                complete = False
                logger.warning(
                    "search by image %s: the exact scan outlasted %.3g s; answering with the "
                    "widest index scan's candidates",
                    image_id,
                    options.exact_scan_seconds,
                )
    return StoredImageSearch(rows, bool(rows[0].self_found), scans, exact_scan, complete)


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
    search = await search_stored_image(connection, image_id, options)
    rows, query_hash = search.rows, search.rows[0].query_hash
    if not options.verified:
        return _matches(
            rows, query_hash=query_hash, near_duplicate_threshold=options.near_duplicate_threshold
        )
    ids = [row.id for row in _candidates(rows)[: options.verification_candidates]]
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
    for verification, its local features).

    The index is scanned as wide as the first retry of `search_stored_image` from the start. A
    stored copy of the same bytes is always found: when the scan missed it, the search scans as
    wide as the index goes, then exactly (within `exact_scan_seconds`). An answer with nothing
    scoring `recheck_below` or more gets the widest scan too: a scan stuck far from the query's
    neighbourhood looks like that (and so does a query with no neighbours, which pays it).
    Verification then works on the final scan's candidates."""
    statement = nearest_to_vector_sql(options.index, regions=options.regions)
    parameters = (
        vector_text(vector),
        options.model,
        options.candidates,
        options.largest_distance,
        content_hash,
    )
    if options.index.kind == "none":
        rows = await _run(connection, statement, parameters)
    else:
        wider, widest, exact = _wider_scans(options.index)
        # The first scan is the wider one: next to embedding the upload (hundreds of ms) it
        # costs little, and it reaches neighbourhoods a scan at ef_search stops short of.
        rows = await _run(connection, statement, parameters, wider)
        copy = rows[0].stored_copy
        lost = (copy is not None and _missed(rows, copy)) or not _similar_found(rows, options)
        if lost and widest != wider:
            rows = await _run(connection, statement, parameters, widest)
        if copy is not None and _missed(rows, copy):
            # Only a missed copy is worth an exact scan.
            exact_rows = await _run_exact(connection, statement, parameters, exact, options)
            rows = rows if exact_rows is None else exact_rows
    if not options.verified:
        return _matches(
            rows, query_hash=content_hash, near_duplicate_threshold=options.near_duplicate_threshold
        )
    ids = [row.id for row in _candidates(rows)[: options.verification_candidates]]
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
