"""The vector index: created, replaced or rebuilt to match VECTOR_INDEX and its knobs.

Kept out of init.sql because its kind and parameters are settings, and because an IVFFlat index
must not be built before the table holds data: it learns its list centres from the rows present
at build time, and one built on an empty table keeps useless centres forever.

Builds run CONCURRENTLY under a temporary name and are swapped in, so searches and uploads go
on while an index is (re)built.
"""

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Dialect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import UserDefinedType

from app.core.config import VectorIndexConfig

logger = logging.getLogger(__name__)

INDEX_NAME = "images_embedding_vector_idx"
# The region vectors' index (REGION_VECTORS): the same kind and parameters, on image_regions.
REGION_INDEX_NAME = "image_regions_embedding_vector_idx"
_INDEXED_TABLES = {INDEX_NAME: "images", REGION_INDEX_NAME: "image_regions"}
# Below this, IVFFlat is not built (its centres would be learnt from too few rows) and searches
# are exact, which at this size costs a few milliseconds.
IVFFLAT_MIN_ROWS = 10_000
# One lock for all schema work (init.sql and the vector index), so that none of it runs beside a
# CREATE INDEX CONCURRENTLY, in this process or another.
SCHEMA_LOCK_ID = 0x1A9E5
_LOCK_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class IndexStatus:
    action: str  # "kept", "built", "dropped", "deferred" or "absent"
    definition: str | None  # what the index is, e.g. "hnsw storage=vector m=16 ..."


def indexed_expression(config: VectorIndexConfig) -> str:
    """The expression searches order by; it must match the index's expression and opclass."""
    if config.storage == "halfvec":
        return f"(embedding_vector::halfvec({config.dimension}))"
    return "embedding_vector"


def query_expression(config: VectorIndexConfig, vector: str) -> str:
    """`vector` (an SQL expression of type vector) in the form the index compares."""
    if config.storage == "halfvec":
        return f"({vector})::halfvec({config.dimension})"
    return vector


def search_settings(config: VectorIndexConfig) -> dict[str, str]:
    """Per-connection settings for index scans (pgvector reads them when it loads)."""
    return {
        "hnsw.ef_search": str(config.hnsw_ef_search),
        "ivfflat.probes": str(config.ivfflat_probes),
        # pgvector >= 0.8: a scan goes on past deleted or filtered-out rows until it has LIMIT
        # results. Older pgvector drops these unknown settings with a warning.
        "hnsw.iterative_scan": "relaxed_order",
        "ivfflat.iterative_scan": "relaxed_order",
    }


def _signature(config: VectorIndexConfig) -> str:
    if config.kind == "hnsw":
        return (
            f"hnsw storage={config.storage} m={config.hnsw_m} "
            f"ef_construction={config.hnsw_ef_construction}"
        )
    explicit = f" lists={config.ivfflat_lists}" if config.ivfflat_lists else ""
    return f"ivfflat storage={config.storage}{explicit}"


def default_lists(rows: int) -> int:
    # pgvector's guidance: rows / 1000 up to a million rows, sqrt(rows) beyond.
    return max(1, rows // 1000 if rows <= 1_000_000 else int(math.sqrt(rows)))


async def describe_vector_index(connection: AsyncConnection, name: str = INDEX_NAME) -> str | None:
    """What the vector index `name` is (its comment, e.g. "hnsw storage=vector m=16 ..."),
    "unknown" for an index made by hand, None when there is none. One round trip."""
    exists, definition = (
        await connection.execute(
            text(
                "SELECT to_regclass(:name) IS NOT NULL, "
                "obj_description(to_regclass(:name), 'pg_class')"
            ),
            {"name": name},
        )
    ).one()
    return (definition or "unknown") if exists else None


async def ensure_vector_index(
    engine: AsyncEngine, config: VectorIndexConfig, *, rebuild: bool = False
) -> IndexStatus:
    """Make the vector indexes (the images' and the region vectors') match `config`. `rebuild`
    rebuilds them even if they match (for an IVFFlat index whose collection has grown since it
    was built). Returns the images index's status."""
    async with schema_lock(engine) as connection:
        status = await _reconcile(connection, config, INDEX_NAME, rebuild=rebuild)
        await _reconcile(connection, config, REGION_INDEX_NAME, rebuild=rebuild)
        return status


@asynccontextmanager
async def schema_lock(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Hold the schema lock on an autocommit connection of its own, which the block may use.

    Polled rather than waited for inside PostgreSQL, with no transaction open meanwhile: a
    statement waiting for a lock holds a snapshot, and a CREATE INDEX CONCURRENTLY run under
    the lock waits for every older snapshot, so two processes starting at once deadlocked."""
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        lock = {"id": SCHEMA_LOCK_ID}
        # The lock lives in PostgreSQL, so there is no event to wait on: poll.
        while not await connection.scalar(text("SELECT pg_try_advisory_lock(:id)"), lock):  # noqa: ASYNC110
            await asyncio.sleep(_LOCK_POLL_SECONDS)
        try:
            yield connection
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:id)"), lock)


async def _reconcile(
    connection: AsyncConnection, config: VectorIndexConfig, name: str, *, rebuild: bool
) -> IndexStatus:
    table, build_name = _INDEXED_TABLES[name], f"{name}_build"
    current = await describe_vector_index(connection, name)
    if config.kind == "none":
        if current is None:
            return IndexStatus("absent", None)
        await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        return IndexStatus("dropped", None)

    wanted = _signature(config)
    if current is not None and current.startswith(wanted) and not rebuild:
        await _set_insert_candidates(connection, config, name)
        return IndexStatus("kept", current)

    definition = wanted
    options = f"m = {config.hnsw_m}, ef_construction = {config.hnsw_ef_construction}"
    if config.kind == "ivfflat":
        rows = await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0  # noqa: S608
        if rows < IVFFLAT_MIN_ROWS:
            if current is not None:
                await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            logger.warning(
                "IVFFlat index on %s not built: %d rows (needs %d); searches are exact until "
                "`python -m app reindex` runs on a larger collection",
                table,
                rows,
                IVFFLAT_MIN_ROWS,
            )
            return IndexStatus("deferred", None)
        lists = config.ivfflat_lists or default_lists(rows)
        options = f"lists = {lists}"
        definition = f"ivfflat storage={config.storage} lists={lists}"

    opclass = "halfvec_cosine_ops" if config.storage == "halfvec" else "vector_cosine_ops"
    kind = "vector index" if name == INDEX_NAME else "region vector index"
    logger.info("building %s: %s", kind, definition)
    await connection.execute(text(f"SET maintenance_work_mem = '{config.build_memory}'"))
    await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {build_name}"))
    await connection.execute(
        text(
            f"CREATE INDEX CONCURRENTLY {build_name} ON {table} "
            f"USING {config.kind} ({indexed_expression(config)} {opclass}) WITH ({options})"
        )
    )
    await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
    await connection.execute(text(f"ALTER INDEX {build_name} RENAME TO {name}"))
    await connection.execute(text(f"COMMENT ON INDEX {name} IS '{definition}'"))
    await _set_insert_candidates(connection, config, name)
    return IndexStatus("built", definition)


async def _set_insert_candidates(
    connection: AsyncConnection, config: VectorIndexConfig, name: str
) -> None:
    """Give an HNSW index HNSW_INSERT_EF_CONSTRUCTION for the rows inserted from now on.

    pgvector reads `ef_construction` from the index's options at every insert, so changing
    them changes how later rows are linked without touching the graph built so far (nor the
    comment that says how it was built). A REINDEX run by hand would build with this value."""
    if config.kind != "hnsw":
        return
    wanted = f"ef_construction={config.hnsw_insert_ef_construction}"
    options = await connection.scalar(
        text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:name)"), {"name": name}
    )
    if wanted not in (options or []):
        await connection.execute(
            text(f"ALTER INDEX {name} SET (ef_construction = {config.hnsw_insert_ef_construction})")
        )


def vector_text(vector: NDArray[np.float32]) -> str:
    """pgvector's text form, `[0.1,0.2,...]`; nine significant digits give back every float32
    exactly."""
    return "[" + ",".join([f"{value:.9g}" for value in vector.tolist()]) + "]"


def parse_vector(text: str) -> NDArray[np.float32]:
    """The inverse of `vector_text` (pgvector's text output)."""
    return np.array(text[1:-1].split(","), dtype=np.float32)


class EmbeddingVector(UserDefinedType[NDArray[np.float32]]):
    """The `vector` column: numpy float32 arrays in and out, through pgvector's text form.

    Dimension-free: the column type in init.sql enforces it (checked at start-up against
    EMBEDDING_DIMENSION)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "VECTOR"

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], str | None]:
        def process(value: Any) -> str | None:
            return None if value is None else vector_text(np.asarray(value, dtype=np.float32))

        return process

    def result_processor(
        self, dialect: Dialect, coltype: object
    ) -> Callable[[Any], NDArray[np.float32] | None]:
        def process(value: Any) -> NDArray[np.float32] | None:
            return None if value is None else parse_vector(value)

        return process
