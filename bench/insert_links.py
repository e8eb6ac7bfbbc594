"""How well rows added one by one to a built HNSW graph are linked, at two insert candidate lists.

Loads N clustered vectors, builds the index over the first B of them in bulk (at
HNSW_EF_CONSTRUCTION), copies that database (CREATE DATABASE ... TEMPLATE), so that both copies
hold the same graph, and sets one copy's index to HNSW_INSERT_EF_CONSTRUCTION and the other's to
`--against`. The remaining rows are then inserted one by one (COPY into the indexed table) into
both copies at once, and each copy is measured:
- 2,000 searches by inserted rows: how the first index scan at ef_search did (the query image
  itself found? all ten nearest found?), then the service's own search (`search_stored_image`,
  with its retries): self-hit after the retries, searches that ended in the exact scan and those
  cut short, recall@10 against exact numpy search, searches that found at most one of their ten;
- 1,000 held-out searches by upload (`search_by_image`): recall@10 and the share at 0;
- the insert time per row: 4,000 more rows each, in blocks of 500 taking turns.

    REGION_VECTORS=false INDEX_BUILD_MEMORY=4GB .venv/bin/python -m bench.insert_links \\
        --rows 1000000 --bulk 900000 --against 128

Index settings come from the environment, as for the service. Uses DATABASE_URL's server if set
(in databases of its own), else an embedded PostgreSQL.
"""

import argparse
import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import asyncpg
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.database import apply_schema, create_engine, prepare_vector_index
from app.core.resources import SearchDefaults
from app.core.vector_index import ensure_vector_index, search_settings
from app.services.search import (
    SearchOptions,
    nearest_images_sql,
    search_by_image,
    search_stored_image,
)
from bench.corpus import clustered_vectors, copy_vectors
from bench.harness import fresh_database, libpq_dsn, postgres_server
from bench.search import HELD_OUT, SELF_HIT_QUERIES, exact_nearest

MODEL = "bench"
COST_ROWS, COST_BLOCK = 4000, 500


@dataclass
class Copy:
    name: str
    insert_ef_construction: int
    url: URL
    engine: AsyncEngine | None = None
    ids: list[uuid.UUID] | None = None
    insert_s: float = 0.0


async def measure(
    copy: Copy,
    settings: Settings,
    stored: NDArray[np.float32],
    held_out: NDArray[np.float32],
    sample: NDArray[np.intp],
) -> None:
    assert copy.engine is not None and copy.ids is not None
    ids, index = copy.ids, settings.vector_index
    options = SearchOptions.for_request(SearchDefaults.from_settings(settings), MODEL, 10, -1.0)
    first_scans: Counter[str] = Counter()
    self_hits, exact_scans, cut_short, at_most_one, recalls = 0, 0, 0, 0, []
    async with copy.engine.connect() as connection:
        for i, nearest in zip(sample, exact_nearest(stored, stored[sample], 11), strict=True):
            neighbours = {ids[j] for j in [j for j in nearest if j != i][:10]}
            first = (
                await connection.exec_driver_sql(
                    nearest_images_sql(index), (ids[i], MODEL, 11, 2.0, 10)
                )
            ).all()
            all_ten = len({row.id for row in first} & neighbours) == 10
            first_scans[
                ("found the image" if first[0].self_found else "missed the image")
                + (", all ten" if all_ten else ", not all ten")
            ] += 1
            searched = await search_stored_image(connection, ids[i], options)
            found = len({row.id for row in searched.rows} & neighbours)
            self_hits += searched.self_found
            exact_scans += searched.exact
            cut_short += not searched.complete
            at_most_one += found <= 1
            recalls.append(found / 10)
        held_out_recalls = []
        for query, exact in zip(held_out, exact_nearest(stored, held_out, 10), strict=True):
            matches = await search_by_image(connection, query, "", options)
            held_out_recalls.append(len({m.id for m in matches} & {ids[j] for j in exact}) / 10)
    print(
        f"insert ef_construction {copy.insert_ef_construction}, {len(sample)} searches by "
        f"inserted rows; first index scan: {dict(sorted(first_scans.items()))}"
    )
    print(
        f"  the service: self-hit after the retries {self_hits / len(sample):.4f}, ended in the "
        f"exact scan {exact_scans}, cut short {cut_short}; recall@10 {np.mean(recalls):.4f}, "
        f"searches at 0 {sum(r == 0 for r in recalls)}, at most one of ten {at_most_one}"
    )
    print(
        f"  held-out searches by upload: recall@10 {np.mean(held_out_recalls):.4f}, share at 0 "
        f"{np.mean([r == 0 for r in held_out_recalls]):.3f}"
    )


async def run(rows: int, bulk: int, against: int) -> None:
    settings = Settings(STORAGE_BACKEND="local", VERIFY_NEAR_DUPLICATES=False, REGION_VECTORS=False)
    clusters = max(100, rows // 100)
    vectors = clustered_vectors(rows + HELD_OUT + COST_ROWS, clusters=clusters, seed=1)
    stored, held_out = vectors[:rows], vectors[rows : rows + HELD_OUT]
    extra = vectors[rows + HELD_OUT :]
    with postgres_server() as server_dsn:
        url = await fresh_database(server_dsn, "image_bench_links_a")
        engine = create_engine(url, statement_timeout=None)
        await apply_schema(engine, embedding_dimension=settings.EMBEDDING_DIMENSION)
        await engine.dispose()
        started = time.perf_counter()
        bulk_ids = await copy_vectors(libpq_dsn(url), stored[:bulk], model=MODEL)
        await prepare_vector_index(url, settings)
        print(f"bulk: {bulk} rows loaded and indexed in {time.perf_counter() - started:.1f} s")
        # The second copy: the same graph, byte for byte.
        other = url.set(database="image_bench_links_b")
        server = await asyncpg.connect(server_dsn)
        try:
            await server.execute(f'DROP DATABASE IF EXISTS "{other.database}" WITH (FORCE)')
            await server.execute(f'CREATE DATABASE "{other.database}" TEMPLATE "{url.database}"')
        finally:
            await server.close()
        copies = [
            Copy("default", settings.HNSW_INSERT_EF_CONSTRUCTION, url),
            Copy("against", against, other),
        ]
        for copy in copies:
            copy.engine = create_engine(
                copy.url,
                server_settings=search_settings(settings.vector_index),
                statement_timeout=None,
            )
            await ensure_vector_index(
                copy.engine,
                Settings(
                    STORAGE_BACKEND="local",
                    REGION_VECTORS=False,
                    HNSW_INSERT_EF_CONSTRUCTION=copy.insert_ef_construction,
                ).vector_index,
            )

        async def grow(copy: Copy) -> None:
            started = time.perf_counter()
            copy.ids = bulk_ids + await copy_vectors(
                libpq_dsn(copy.url), stored[bulk:], model=MODEL
            )
            copy.insert_s = time.perf_counter() - started

        await asyncio.gather(*(grow(copy) for copy in copies))
        for copy in copies:
            print(
                f"insert ef_construction {copy.insert_ef_construction}: {rows - bulk} rows one by "
                f"one in {copy.insert_s:.1f} s (both copies at once)"
            )
        rng = np.random.default_rng(3)
        sample = bulk + rng.choice(
            rows - bulk, size=min(SELF_HIT_QUERIES, rows - bulk), replace=False
        )
        for copy in copies:
            await measure(copy, settings, stored, held_out, sample)
        # The insert cost, taking turns so that both see the same moments of the machine.
        spent = {copy.name: 0.0 for copy in copies}
        for block in range(COST_ROWS // COST_BLOCK):
            order = copies if block % 2 == 0 else copies[::-1]
            for copy in order:
                chunk = extra[block * COST_BLOCK : (block + 1) * COST_BLOCK]
                started = time.perf_counter()
                await copy_vectors(libpq_dsn(copy.url), chunk, model=MODEL)
                spent[copy.name] += time.perf_counter() - started
        for copy in copies:
            print(
                f"insert ef_construction {copy.insert_ef_construction}: "
                f"{spent[copy.name] / COST_ROWS * 1000:.2f} ms per row"
            )
            if copy.engine is not None:
                await copy.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bulk", type=int, help="rows indexed in bulk (default: 90 %% of --rows)")
    parser.add_argument(
        "--against",
        type=int,
        default=Settings.model_fields["HNSW_EF_CONSTRUCTION"].default,
        help="the other copy's insert candidate list (default: HNSW_EF_CONSTRUCTION's default)",
    )
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    bulk = arguments.bulk if arguments.bulk is not None else arguments.rows * 9 // 10
    asyncio.run(run(arguments.rows, min(bulk, arguments.rows), arguments.against))


if __name__ == "__main__":
    main()
