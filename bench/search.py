"""Similar-image search at scale: recall, latency of the raw SQL and of HTTP, index build.

Loads N clustered vectors with COPY, builds the configured index, then
- recall@10 of held-out query vectors against exact (numpy) search;
- p50/p95/p99 latency of the service's own search statement (compiled as the service sends it)
  run through asyncpg alone, and of GET /similar on the app running in its own process (a
  minimal keep-alive HTTP client), at concurrency 1 and 8, for the same stored query images,
  taking turns in blocks of 200 calls; with `--baseline DIR`, also GET /similar of another
  checkout (an earlier commit) on the same data, in the same turns;
- the cost of a search that nothing passes (threshold above every neighbour) against a normal one;
- the HTTP round trip without a search (GET /api/v1/health/live), the floor under any endpoint.

    .venv/bin/python -m bench.search --rows 100000
    VECTOR_STORAGE=halfvec .venv/bin/python -m bench.search --rows 1000000

Index settings come from the environment, as for the service (VECTOR_INDEX, HNSW_EF_SEARCH, ...).
Uses DATABASE_URL's server if set (in a database of its own), else an embedded PostgreSQL; with
STORAGE_BACKEND=s3 the app runs on S3_ENDPOINT_URL's store, else on a SeaweedFS of its own.
"""

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import numpy as np

from app.core.config import Settings
from app.core.database import apply_schema, create_engine, prepare_vector_index
from app.core.vector_index import INDEX_NAME, search_settings
from app.services.search import SearchOptions, nearest_images_sql, search_by_image
from bench.corpus import clustered_vectors, copy_vectors
from bench.harness import (
    ROOT as ROOT_CHECKOUT,
)
from bench.harness import (
    KeepAliveClient,
    fresh_database,
    latencies,
    libpq_dsn,
    percentile,
    postgres_server,
    running_app,
    summary,
)
from bench.seaweedfs import storage_environment

MODEL = "perceptual"  # the service's default model, so /similar compares these rows
QUERIES = 200
BLOCKS = 5  # of QUERIES calls each, per kind of call and concurrency
Call = Callable[[int], Awaitable[object]]


async def run(rows: int, baseline: Path | None) -> None:
    # The index settings; STORAGE_BACKEND is for the app this run starts (storage_environment).
    settings = Settings(STORAGE_BACKEND="local")
    index = settings.vector_index
    async with AsyncExitStack() as stack:
        server_dsn = stack.enter_context(postgres_server())
        url = await fresh_database(server_dsn, "image_bench_search")
        engine = create_engine(url, server_settings=search_settings(index))
        stack.push_async_callback(engine.dispose)
        await apply_schema(engine, embedding_dimension=settings.EMBEDDING_DIMENSION)

        clusters = max(100, rows // 100)
        vectors = clustered_vectors(rows + QUERIES, clusters=clusters, seed=1)
        stored, held_out = vectors[:rows], vectors[rows:]
        started = time.perf_counter()
        ids = await copy_vectors(libpq_dsn(url), stored, model=MODEL)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        status = await prepare_vector_index(url, settings)
        build_s = time.perf_counter() - started

        async with engine.connect() as connection:
            index_mb = (
                await connection.exec_driver_sql(
                    "SELECT pg_relation_size(to_regclass($1))", (INDEX_NAME,)
                )
            ).scalar_one() or 0
            table_mb = (
                await connection.exec_driver_sql("SELECT pg_total_relation_size('images')")
            ).scalar_one()
            # Recall@10 of held-out vectors against exact search, through the service's own
            # statement and vector codec (a search by an uploaded image).
            options = SearchOptions(MODEL, 10, -1.0, settings.NEAR_DUPLICATE_THRESHOLD, index)
            found = 0
            for query in held_out:
                matches = await search_by_image(connection, query, "", options)
                exact = np.argsort(-(stored @ query))[:10]
                found += len({match.id for match in matches} & {ids[i] for i in exact})
        recall = found / (10 * len(held_out))

        rng = np.random.default_rng(2)
        query_ids = [ids[i] for i in rng.choice(rows, size=QUERIES, replace=False)]

        # The floor under the endpoint: the service's own statement, compiled as the service
        # sends it, run through asyncpg alone (no SQLAlchemy, no HTTP).
        compiled = nearest_images_sql(index).compile(dialect=engine.dialect)
        statement, order = str(compiled), compiled.positiontup or []
        pool = await asyncpg.create_pool(
            libpq_dsn(url), min_size=8, max_size=8, server_settings=search_settings(index)
        )
        stack.push_async_callback(pool.close)

        async def sql_call(number: int, threshold: float = -1.0) -> object:
            values = {
                "image_id": query_ids[number % QUERIES],
                "model": MODEL,
                "candidates": 11,
                "max_distance": 1 - threshold,
                "limit": 10,
            }
            return await pool.fetch(statement, *[values[name] for name in order])

        async def sql_call_nothing_passes(number: int) -> object:
            return await sql_call(number, threshold=0.999)

        storage = stack.enter_context(storage_environment("bench-search"))
        environment = {"DATABASE_URL": url.render_as_string(hide_password=False), **storage}
        apps = {"http": ROOT_CHECKOUT} | ({"baseline http": baseline} if baseline else {})
        clients: dict[str, KeepAliveClient] = {}
        for name, checkout in apps.items():
            base_url = await stack.enter_async_context(running_app(environment, checkout))
            clients[name] = await stack.enter_async_context(KeepAliveClient(base_url, 8))

        def http_call(client: KeepAliveClient) -> "Call":
            async def call(number: int) -> object:
                path = f"/api/v1/images/{query_ids[number % QUERIES]}/similar?limit=10&threshold=-1"
                status, body = await client.request("GET", path)
                assert status == 200, body
                return body

            return call

        async def http_floor_call(number: int) -> object:
            status, body = await clients["http"].request("GET", "/api/v1/health/live")
            assert status == 200, body
            return body

        calls: dict[str, Call] = {
            "sql": sql_call,
            "sql nothing passes": sql_call_nothing_passes,
            **{name: http_call(client) for name, client in clients.items()},
            "http floor": http_floor_call,
        }
        # SQL and HTTP take turns in blocks, so that all see the same (shared, drifting)
        # machine; each statistic pools all its blocks.
        report: dict[str, list[float]] = {}
        for concurrency in (1, 8):
            for call in calls.values():
                await latencies(call, QUERIES, concurrency)  # warm the caches
            for _ in range(BLOCKS):
                for name, call in calls.items():
                    key = f"{name} c={concurrency}"
                    block = await latencies(call, QUERIES, concurrency)
                    report[key] = report.get(key, []) + block

    print(f"rows={rows} clusters={clusters} load={load_s:.1f}s (COPY)")
    print(f"index: {status.definition} built in {build_s:.1f}s")
    print(f"index size {index_mb / 2**20:.0f} MB, table {table_mb / 2**20:.0f} MB")
    print(f"recall@10 over {QUERIES} held-out queries: {recall:.3f}")
    for name, values in report.items():
        print(f"{name:<28} {summary(values)}")
    sql_p50 = percentile(report["sql c=1"], 0.5)
    http_p50 = percentile(report["http c=1"], 0.5)
    nothing_ratio = percentile(report["sql nothing passes c=1"], 0.5) / sql_p50
    print(f"nothing-passes / normal search (p50): {nothing_ratio:.2f}")
    floor_p50 = percentile(report["http floor c=1"], 0.5)
    print(
        f"http p50 = sql {sql_p50:.2f} + HTTP round trip without a search (health/live) "
        f"{floor_p50:.2f} + the endpoint's own work {http_p50 - sql_p50 - floor_p50:.2f} ms"
    )
    if baseline is not None:
        baseline_p50 = percentile(report["baseline http c=1"], 0.5)
        print(
            f"baseline ({baseline}): http p50 {baseline_p50:.2f} ms, "
            f"http_over_sql={baseline_p50 / sql_p50:.2f}; this build / baseline (p50): "
            f"{http_p50 / baseline_p50:.2f}"
        )
    print(
        f"search: rows={rows} index={index.kind}-{index.storage} recall@10={recall:.3f} "
        f"p50_sql_ms={sql_p50:.2f} p50_http_ms={http_p50:.2f} "
        f"http_over_sql={http_p50 / sql_p50:.2f} "
        f"p99_http_ms={percentile(report['http c=1'], 0.99):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this project (with its .venv): its /similar is measured "
        "in the same run, taking turns with this build's",
    )
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    asyncio.run(run(arguments.rows, arguments.baseline))


if __name__ == "__main__":
    main()
