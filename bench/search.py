"""Similar-image search at scale: recall, latency of the raw SQL and of HTTP, index build.

Loads N clustered vectors with COPY, builds the configured index, then
- recall@10 of held-out query vectors against exact (numpy) search, through the service's own
  search by upload: the mean and the tail (the share of queries at 0 and below 0.5), and the
  same for one index scan at ef_search alone, with the time of each;
- for searches by 2,000 stored images: the self-hit rate of the first index scan (the query
  image among its own candidates), how many the service retried wider, the self-hit after its
  retries, how many reached the widest index scan and the exact scan (and how many exact scans
  were cut short at half of DB_STATEMENT_TIMEOUT), and recall@10 of what it returns;
- the service's search by a stored image that nothing is like (it pays the retries up to the
  widest index scan) against an ordinary one, in turns;
- p50/p95/p99 latency of the service's own search statement run through asyncpg alone, and
  of GET /similar on the app running in its own process (a minimal keep-alive HTTP client),
  at concurrency 1 and 8, for the same stored query images,
  taking turns in blocks of 200 calls; with `--baseline DIR`, also GET /similar of another
  checkout (an earlier commit) on the same data, in the same turns, compared with this build's
  search without verification and region vectors (what the earlier commits ran). Set
  EMBEDDING_MODEL to a model both builds have (`perceptual` for commits whose `cnn` needs
  torch);
- the cost of a search that nothing passes (threshold above every neighbour) against a normal one;
- the HTTP round trip without a search (GET /api/v1/health/live), the floor under any endpoint;
- GET /similar with region vectors (the default: every row has REGION_COUNT of them, drawn
  around the same cluster centres, in image_regions and its own index) against the same app
  with REGION_VECTORS=false, which searches the global vectors alone, and against the app with
  both REGION_VECTORS and VERIFY_NEAR_DUPLICATES off (the search before either existed);
- GET /similar with near-duplicate verification (the default: VERIFICATION_CANDIDATES
  candidates verified with their stored local features) against the same app with
  VERIFY_NEAR_DUPLICATES=false, which runs the search exactly as before verification existed
  (p50 and the server's CPU time per call, each app in its own process). Every row carries the
  local features of one of 64 synthetic pictures (28 KB each, as real ones), so verification
  reads and compares real-sized features; the candidates are unrelated to the query, so each
  is tried as it is and mirrored, the slowest case.

    .venv/bin/python -m bench.search --rows 100000
    .venv/bin/python -m bench.search --rows 100000 --grown       # index grown row by row
    REGION_VECTORS=false .venv/bin/python -m bench.search --rows 1000000 --grown-after 900000
    EMBEDDING_MODEL=perceptual REGION_VECTORS=false .venv/bin/python -m bench.search \
        --rows 100000 --baseline DIR    # the apps read the settings: the same search on both
    VECTOR_STORAGE=halfvec .venv/bin/python -m bench.search --rows 1000000

Index settings come from the environment, as for the service (VECTOR_INDEX, HNSW_EF_SEARCH, ...).
Uses DATABASE_URL's server if set (in a database of its own), else an embedded PostgreSQL; with
STORAGE_BACKEND=s3 the app runs on S3_ENDPOINT_URL's store, else on a SeaweedFS of its own.
"""

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import numpy as np
from numpy.typing import NDArray

from app.core.config import Settings
from app.core.database import apply_schema, create_engine, prepare_vector_index
from app.core.resources import SearchDefaults
from app.core.vector_index import INDEX_NAME, REGION_INDEX_NAME, search_settings, vector_text
from app.imaging.embeddings import REGION_BOXES
from app.imaging.verification import extract
from app.services.search import (
    SearchOptions,
    nearest_images_sql,
    nearest_to_vector_sql,
    search_by_image,
    search_stored_image,
)
from bench.corpus import clustered_vectors, copy_regions, copy_vectors
from bench.edit_sets import shapes
from bench.harness import (
    ROOT as ROOT_CHECKOUT,
)
from bench.harness import (
    KeepAliveClient,
    RunningApp,
    fresh_database,
    latencies,
    libpq_dsn,
    percentile,
    postgres_server,
    running_app,
    summary,
)
from bench.seaweedfs import storage_environment

# The rows' model: EMBEDDING_MODEL as the apps of this run read it (the service's default if
# unset), so /similar compares these rows.
MODEL = os.environ.get("EMBEDDING_MODEL", Settings.model_fields["EMBEDDING_MODEL"].default)
FEATURE_PICTURES = 64
QUERIES = 200
REGION_COUNT = len(REGION_BOXES)  # region vectors per row, as uploads store them
# Held-out queries for recall@10: 1,000, so that a single query that finds none of its
# neighbours is a share of 0.001 (one in 200 was 0.005, too coarse for the tail).
HELD_OUT = 1000
BLOCKS = 5  # of QUERIES calls each, per kind of call and concurrency
Call = Callable[[int], Awaitable[object]]


SELF_HIT_QUERIES = 2000  # stored images searched for the tail figures


async def run(rows: int, baseline: Path | None, bulk_rows: int, loaders: int = 1) -> None:
    """`bulk_rows`: how many rows the index is built over in bulk; the rest join it one by one,
    through `loaders` concurrent connections (as concurrent uploads insert them)."""
    # The index settings; STORAGE_BACKEND is for the app this run starts (storage_environment).
    # Verification off: the recall and self-hit figures are the index's own (verification
    # re-ranks the final scan's candidates after it; the apps below measure what it costs).
    # Region vectors off too: recall is measured against an exact search of the global vectors.
    settings = Settings(STORAGE_BACKEND="local", VERIFY_NEAR_DUPLICATES=False, REGION_VECTORS=False)
    # The apps' own REGION_VECTORS (from the environment, as they read it): with it off, no
    # region rows are loaded and the comparison without them is left out.
    regions_on = Settings(STORAGE_BACKEND="local").REGION_VECTORS
    index = settings.vector_index
    async with AsyncExitStack() as stack:
        server_dsn = stack.enter_context(postgres_server())
        url = await fresh_database(server_dsn, "image_bench_search")
        # No statement timeout: the exact scan that ends a lost search takes seconds at a
        # million rows on a busy machine, longer than DB_STATEMENT_TIMEOUT (the app's own
        # requests keep it); the figures below count those scans and their time.
        engine = create_engine(url, server_settings=search_settings(index), statement_timeout=None)
        stack.push_async_callback(engine.dispose)
        await apply_schema(engine, embedding_dimension=settings.EMBEDDING_DIMENSION)

        clusters = max(100, rows // 100)
        vectors = clustered_vectors(rows + HELD_OUT, clusters=clusters, seed=1)
        stored, held_out = vectors[:rows], vectors[rows:]
        started = time.perf_counter()
        # The first `bulk_rows` rows, then the index, then the rest: each of those is inserted
        # into the graph as it arrives, as uploads grow it.
        ids = (
            await copy_vectors(
                libpq_dsn(url), stored[:bulk_rows], model=MODEL, local_features=feature_blobs()
            )
            if bulk_rows
            else []
        )
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        status = await prepare_vector_index(url, settings)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        if bulk_rows < rows:
            blobs = feature_blobs()
            for loaded in await asyncio.gather(
                *(
                    copy_vectors(libpq_dsn(url), part, model=MODEL, local_features=blobs)
                    for part in np.array_split(stored[bulk_rows:], loaders)
                )
            ):
                ids += loaded
        grow_s = time.perf_counter() - started
        if regions_on:
            regions = clustered_vectors(rows * REGION_COUNT, clusters=clusters, seed=1)
            await copy_regions(
                libpq_dsn(url), ids, regions.reshape(rows, REGION_COUNT, -1), model=MODEL
            )

        async with engine.connect() as connection:
            index_mb = (
                await connection.exec_driver_sql(
                    "SELECT pg_relation_size(to_regclass($1))", (INDEX_NAME,)
                )
            ).scalar_one() or 0
            table_mb = (
                await connection.exec_driver_sql("SELECT pg_total_relation_size('images')")
            ).scalar_one()
            region_index_mb, regions_mb = (
                await connection.exec_driver_sql(
                    "SELECT pg_relation_size(to_regclass($1)), "
                    "pg_total_relation_size('image_regions') - pg_indexes_size('image_regions')",
                    (REGION_INDEX_NAME,),
                )
            ).one()
            # Recall@10 of held-out vectors against exact search, through the service's own
            # statement and vector codec (a search by an uploaded image).
            # The service's own options (its re-check threshold included), all results kept.
            options = SearchOptions.for_request(
                SearchDefaults.from_settings(settings), MODEL, 10, -1.0
            )
            # Next to it, one scan at ef_search alone (what the service scanned first before it
            # started searches by upload wider): its recall and its time.
            held_out_recalls, single_scan_recalls = [], []
            held_out_ms: list[float] = []
            single_scan_ms: list[float] = []
            single_scan = nearest_to_vector_sql(index)
            for query, exact in zip(held_out, exact_nearest(stored, held_out, 10), strict=True):
                expected = {ids[i] for i in exact}
                started = time.perf_counter()
                matches = await search_by_image(connection, query, "", options)
                held_out_ms.append((time.perf_counter() - started) * 1000)
                held_out_recalls.append(len({match.id for match in matches} & expected) / 10)
                started = time.perf_counter()
                scanned = await connection.exec_driver_sql(
                    single_scan, (vector_text(query), MODEL, 10, 2.0, "")
                )
                single_scan_ms.append((time.perf_counter() - started) * 1000)
                single_scan_recalls.append(len({row.id for row in scanned} & expected) / 10)
            # The tail of searches by a stored image: did the first index scan reach the query
            # image itself (self-hit before the service's retries), did the service's final
            # scan, and how close to the exact answer is what the service returns.
            rng = np.random.default_rng(3)
            # Among the rows that joined the graph one by one, if any did.
            grown = range(bulk_rows, rows) if bulk_rows < rows else range(rows)
            sample = bulk_rows % rows + rng.choice(
                len(grown), size=min(SELF_HIT_QUERIES, len(grown)), replace=False
            )
            first_hits, final_hits, retried, widest, cut_short, stored_recalls = 0, 0, 0, 0, 0, []
            exact_scan_ms: list[float] = []  # searches that ended in the exact scan
            for i, nearest in zip(sample, exact_nearest(stored, stored[sample], 11), strict=True):
                first = await connection.exec_driver_sql(
                    nearest_images_sql(index), (ids[i], MODEL, 11, 2.0, 10)
                )
                first_hits += bool(first.all()[0].self_found)
                started = time.perf_counter()
                searched = await search_stored_image(connection, ids[i], options)
                if searched.exact:
                    exact_scan_ms.append((time.perf_counter() - started) * 1000)
                final_hits += searched.self_found
                retried += searched.scans > 1
                widest += searched.scans > 2
                cut_short += not searched.complete
                neighbours = [j for j in nearest if j != i][:10]
                found = len({row.id for row in searched.rows} & {ids[j] for j in neighbours})
                stored_recalls.append(found / 10)
            # What an image with nothing like it costs: a direction of its own (scoring about 0
            # with every row) is searched with the index scans up to the widest before the
            # service answers "nothing similar"; an ordinary stored image, in turns with it.
            direction = np.random.default_rng(4).standard_normal((1, vectors.shape[1]))
            alone = (direction / np.linalg.norm(direction)).astype(np.float32)
            (alone_id,) = await copy_vectors(libpq_dsn(url), alone, model=MODEL)
            alone_ms: list[float] = []
            ordinary_ms: list[float] = []
            alone_scans: Counter[int] = Counter()
            for number in range(QUERIES):
                for query_id, timings in (
                    (alone_id, alone_ms),
                    (ids[sample[number % len(sample)]], ordinary_ms),
                ):
                    started = time.perf_counter()
                    searched = await search_stored_image(connection, query_id, options)
                    timings.append((time.perf_counter() - started) * 1000)
                    if query_id == alone_id:
                        alone_scans[searched.scans] += 1
        recall = float(np.mean(held_out_recalls))
        zero_recall = float(np.mean([r == 0 for r in held_out_recalls]))
        low_recall = float(np.mean([r < 0.5 for r in held_out_recalls]))
        self_hit_first = first_hits / len(sample)
        self_hit = final_hits / len(sample)

        rng = np.random.default_rng(2)
        query_ids = [ids[i] for i in rng.choice(rows, size=QUERIES, replace=False)]

        # The floor under the endpoint: the service's own statement run through asyncpg alone
        # (no SQLAlchemy, no HTTP).
        statement = nearest_images_sql(index)
        pool = await asyncpg.create_pool(
            libpq_dsn(url), min_size=8, max_size=8, server_settings=search_settings(index)
        )
        stack.push_async_callback(pool.close)

        async def sql_call(number: int, threshold: float = -1.0) -> object:
            return await pool.fetch(
                statement, query_ids[number % QUERIES], MODEL, 11, 1 - threshold, 10
            )

        async def sql_call_nothing_passes(number: int) -> object:
            return await sql_call(number, threshold=0.999)

        storage = stack.enter_context(storage_environment("bench-search"))
        environment = {"DATABASE_URL": url.render_as_string(hide_password=False), **storage}
        apps = {
            "http": (ROOT_CHECKOUT, environment),
            "http verify off": (ROOT_CHECKOUT, {**environment, "VERIFY_NEAR_DUPLICATES": "false"}),
        }
        if regions_on:
            apps["http regions off"] = (ROOT_CHECKOUT, {**environment, "REGION_VECTORS": "false"})
            # Both off: the search as it was before either existed.
            apps["http both off"] = (
                ROOT_CHECKOUT,
                {**environment, "REGION_VECTORS": "false", "VERIFY_NEAR_DUPLICATES": "false"},
            )
        if baseline:
            apps["baseline http"] = (baseline, environment)
        clients: dict[str, KeepAliveClient] = {}
        servers: dict[str, RunningApp] = {}
        for name, (checkout, app_environment) in apps.items():
            servers[name] = await stack.enter_async_context(running_app(app_environment, checkout))
            clients[name] = await stack.enter_async_context(KeepAliveClient(servers[name].url, 8))

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
        server_cpu_ms: dict[str, float] = dict.fromkeys(servers, 0.0)
        for concurrency in (1, 8):
            for call in calls.values():
                await latencies(call, QUERIES, concurrency)  # warm the caches
            for _ in range(BLOCKS):
                for name, call in calls.items():
                    key = f"{name} c={concurrency}"
                    cpu_before = servers[name].cpu_seconds() if name in servers else 0.0
                    block = await latencies(call, QUERIES, concurrency)
                    report[key] = report.get(key, []) + block
                    if name in servers:
                        spent = servers[name].cpu_seconds() - cpu_before
                        server_cpu_ms[name] += spent * 1000 / (QUERIES * BLOCKS * 2)

    built = (
        f"built in bulk over {bulk_rows} rows in {build_s:.1f}s, then {rows - bulk_rows} rows "
        f"inserted one by one in {grow_s:.1f}s ({loaders} connection(s))"
        if bulk_rows < rows
        else f"built in bulk in {build_s:.1f}s"
    )
    print(f"rows={rows} clusters={clusters} load={load_s:.1f}s (COPY)")
    print(
        f"index: {status.definition} {built}; rows inserted after a build: ef_construction "
        f"{index.hnsw_insert_ef_construction}"
    )
    print(f"index size {index_mb / 2**20:.0f} MB, table {table_mb / 2**20:.0f} MB")
    if regions_on:
        print(
            f"region vectors: {rows * REGION_COUNT} rows, {regions_mb / 2**20:.0f} MB, their "
            f"index {(region_index_mb or 0) / 2**20:.0f} MB (index build time above: both)"
        )
    print(
        f"recall@10 over {HELD_OUT} held-out queries: mean {recall:.3f}, "
        f"share at 0: {zero_recall:.3f}, share below 0.5: {low_recall:.3f}; "
        f"the search {summary(held_out_ms)}"
    )
    print(
        f"  one scan at ef_search {index.hnsw_ef_search} instead: recall@10 mean "
        f"{np.mean(single_scan_recalls):.3f}, share at 0: "
        f"{np.mean([r == 0 for r in single_scan_recalls]):.3f}; {summary(single_scan_ms)}"
    )
    print(
        f"searches by {len(sample)} stored images: self-hit of the first index scan "
        f"{self_hit_first:.3f}, retried {retried / len(sample):.3f}, self-hit after the "
        f"retries {self_hit:.3f}; recall@10 mean {np.mean(stored_recalls):.3f}, "
        f"share at 0: {np.mean([r == 0 for r in stored_recalls]):.3f}; reached the widest "
        f"index scan: {widest}, ended in the exact scan: {len(exact_scan_ms)}"
        + (f" (the four scans of each: {summary(exact_scan_ms)})" if exact_scan_ms else "")
        + f", exact scans cut short: {cut_short}"
    )
    print(
        f"a stored image with nothing like it: {summary(alone_ms)} (scans per search: "
        f"{dict(sorted(alone_scans.items()))}); an ordinary one in turns: "
        f"{summary(ordinary_ms)}; "
        f"p50 {percentile(alone_ms, 0.5) / percentile(ordinary_ms, 0.5):.1f} x"
    )
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
    print(f"server CPU per /similar: {server_cpu_ms['http']:.3f} ms")
    off_p50 = percentile(report["http verify off c=1"], 0.5)
    print(
        f"verification: /similar p50 {http_p50:.2f} ms with it, {off_p50:.2f} ms without "
        f"(VERIFY_NEAR_DUPLICATES=false, the search as before): {http_p50 / off_p50:.2f} x; "
        f"server CPU per /similar {server_cpu_ms['http']:.3f} ms with it, "
        f"{server_cpu_ms['http verify off']:.3f} ms without: "
        f"{server_cpu_ms['http'] / server_cpu_ms['http verify off']:.2f} x"
    )
    if regions_on:
        regions_off_p50 = percentile(report["http regions off c=1"], 0.5)
        print(
            f"region vectors: /similar p50 {http_p50:.2f} ms with them, {regions_off_p50:.2f} ms "
            f"without (REGION_VECTORS=false): {http_p50 / regions_off_p50:.2f} x; server CPU per "
            f"/similar {server_cpu_ms['http regions off']:.3f} ms without"
        )
        both_off_p50 = percentile(report["http both off c=1"], 0.5)
        print(
            f"the default (region vectors and verification) against neither: /similar p50 "
            f"{http_p50:.2f} ms against {both_off_p50:.2f} ms: {http_p50 / both_off_p50:.2f} x; "
            f"server CPU per /similar {server_cpu_ms['http']:.3f} ms against "
            f"{server_cpu_ms['http both off']:.3f} ms"
        )
    if baseline is not None:
        baseline_p50 = percentile(report["baseline http c=1"], 0.5)
        # This build's search as the earlier commit runs it: no verification, no region vectors.
        same = "http both off" if regions_on else "http verify off"
        same_p50 = percentile(report[f"{same} c=1"], 0.5)
        print(
            f"baseline ({baseline}): http p50 {baseline_p50:.2f} ms, "
            f"http_over_sql={baseline_p50 / sql_p50:.2f}, server CPU per /similar "
            f"{server_cpu_ms['baseline http']:.3f} ms; this build without verification and "
            f"region vectors (the same search) / baseline: http_over_sql "
            f"{same_p50 / sql_p50:.2f} against {baseline_p50 / sql_p50:.2f}, p50 "
            f"{same_p50 / baseline_p50:.2f}, CPU "
            f"{server_cpu_ms[same] / server_cpu_ms['baseline http']:.2f}"
        )
    print(
        f"search: rows={rows} index={index.kind}-{index.storage} recall@10={recall:.3f} "
        f"p50_sql_ms={sql_p50:.2f} p50_http_ms={http_p50:.2f} "
        f"http_over_sql={http_p50 / sql_p50:.2f} "
        f"p99_http_ms={percentile(report['http c=1'], 0.99):.2f} "
        f"self_hit={self_hit:.3f} zero_recall={zero_recall:.3f}"
    )


def exact_nearest(
    stored: NDArray[np.float32], queries: NDArray[np.float32], k: int
) -> NDArray[np.intp]:
    """Rows of `stored` nearest to each query (unit vectors: highest dot product), (queries, k),
    best first: exact search in blocks of queries, so that a million rows take one pass per
    block rather than one per query."""
    nearest = np.empty((len(queries), k), dtype=np.intp)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ stored.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        nearest[start : start + 64] = np.take_along_axis(top, order, axis=1)
    return nearest


def feature_blobs() -> list[bytes]:
    """The local features of FEATURE_PICTURES synthetic pictures, as uploads store them."""
    blobs = []
    for seed in range(FEATURE_PICTURES):
        picture = shapes(seed)
        blobs.append(extract(picture, original_side=max(picture.size)).to_bytes())
    return blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this project (with its .venv): its /similar is measured "
        "in the same run, taking turns with this build's",
    )
    grown = parser.add_mutually_exclusive_group()
    grown.add_argument(
        "--grown",
        action="store_true",
        help="build the index on the empty table, so rows join it one by one (as uploads do)",
    )
    grown.add_argument(
        "--grown-after",
        type=int,
        metavar="N",
        help="build the index in bulk over the first N rows, then insert the rest one by one; "
        "the searches by stored image are drawn from those (use with REGION_VECTORS=false)",
    )
    parser.add_argument(
        "--loaders",
        type=int,
        default=1,
        help="with --grown or --grown-after: connections inserting the rows one by one at once "
        "(a million rows grown through one take hours)",
    )
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    bulk_rows = 0 if arguments.grown else arguments.rows
    if arguments.grown_after is not None:
        bulk_rows = min(arguments.grown_after, arguments.rows)
    asyncio.run(run(arguments.rows, arguments.baseline, bulk_rows, max(1, arguments.loaders)))


if __name__ == "__main__":
    main()
