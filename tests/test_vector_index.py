"""The vector index follows VECTOR_INDEX and VECTOR_STORAGE, and searches use it."""

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy import URL, Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import VectorIndexConfig
from app.core.database import apply_schema, create_engine, prepare_vector_index
from app.core.vector_index import (
    INDEX_NAME,
    IVFFLAT_MIN_ROWS,
    REGION_INDEX_NAME,
    describe_vector_index,
    ensure_vector_index,
    search_settings,
    vector_text,
)
from app.imaging.verification import extract
from app.services import search
from bench.corpus import clustered_vectors, copy_vectors
from tests.support.app import DatabaseFactory, make_settings

MODEL = "test"


def config(tmp_path: Path, **overrides: object) -> VectorIndexConfig:
    return make_settings(tmp_path, **overrides).vector_index


async def fresh_engine(
    create_database: DatabaseFactory, name: str, index: VectorIndexConfig
) -> tuple[AsyncEngine, URL]:
    url = await create_database(name)
    # No statement timeout: these engines build indexes too, as the service's maintenance
    # engine does (a build on a busy machine outlasts the 2 s of DB_STATEMENT_TIMEOUT).
    engine = create_engine(url, server_settings=search_settings(index), statement_timeout=None)
    await apply_schema(engine, embedding_dimension=512)
    return engine, url


async def sparse_graph(
    tmp_path: Path,
    create_database: DatabaseFactory,
    name: str,
    vectors: NDArray[np.float32],
    *,
    local_features: Sequence[bytes] = (),
) -> tuple[VectorIndexConfig, AsyncEngine, list[uuid.UUID]]:
    """A database whose HNSW index is a sparse graph searched with a tiny beam, holding one row
    per vector (their ids in order), each joining the graph one by one: greedy routing often
    never reaches a query's cluster (as it does, more rarely, at the default settings on 100k
    images)."""
    index = config(
        tmp_path,
        HNSW_M=4,
        HNSW_EF_CONSTRUCTION=8,
        HNSW_INSERT_EF_CONSTRUCTION=8,
        HNSW_EF_SEARCH=2,
    )
    engine, url = await fresh_engine(create_database, name, index)
    await ensure_vector_index(engine, index)
    ids = await copy_vectors(dsn(url), vectors, model=MODEL, local_features=local_features)
    return index, engine, ids


def dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def index_scan(
    connection: AsyncConnection,
    index: VectorIndexConfig,
    query: uuid.UUID,
    *,
    ef_search: int | None = None,
    largest_distance: float = 2.0,
) -> Row[tuple[object, ...]]:
    """One index scan by a stored image, as the service's first (5 results), at the
    connection's ef_search or at `ef_search`: its first row (`self_found`, `best_distance`,
    the best match or None)."""
    if ef_search is not None:
        await connection.exec_driver_sql(f"SET hnsw.ef_search = {ef_search}")
    rows = await connection.exec_driver_sql(
        search.nearest_images_sql(index), (query, MODEL, 6, largest_distance, 5)
    )
    first = rows.all()[0]
    if ef_search is not None:
        await connection.exec_driver_sql("RESET hnsw.ef_search")
    return first


async def stuck_queries(
    connection: AsyncConnection, index: VectorIndexConfig, ids: list[uuid.UUID]
) -> list[int]:
    """Which of every tenth of 2,000 stored images a first index scan does not reach itself
    from: the searches the service has to recover."""
    return [
        query
        for query in range(0, 2000, 10)
        if not (await index_scan(connection, index, ids[query])).self_found
    ]


async def explain(engine: AsyncEngine, index: VectorIndexConfig, query_id: uuid.UUID) -> str:
    async with engine.connect() as connection:
        # On a few thousand rows the planner may rightly prefer a sequential scan; this shows the
        # statement is one the index can serve.
        await connection.execute(text("SET enable_seqscan = off"))
        plan = await connection.exec_driver_sql(
            "EXPLAIN " + search.nearest_images_sql(index), (query_id, MODEL, 11, 0.5, 10)
        )
        return "\n".join(row[0] for row in plan)


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
async def test_hnsw_index_is_built_and_used_by_the_search(
    tmp_path: Path, create_database: DatabaseFactory, storage: str
) -> None:
    index = config(tmp_path, VECTOR_STORAGE=storage)
    engine, url = await fresh_engine(create_database, f"index_hnsw_{storage}", index)
    ids = await copy_vectors(dsn(url), clustered_vectors(3000, clusters=50), model=MODEL)

    status = await ensure_vector_index(engine, index)
    again = await ensure_vector_index(engine, index)
    plan = await explain(engine, index, ids[0])
    await engine.dispose()

    assert status.action == "built"
    assert status.definition == f"hnsw storage={storage} m=16 ef_construction=128"
    assert again.action == "kept"
    assert "Index Scan using images_embedding_vector_idx" in plan


async def test_an_index_of_the_former_default_is_kept_when_pinned_and_rebuilt_otherwise(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    # HNSW_EF_CONSTRUCTION was 64: an existing index is rebuilt at the first start-up with the
    # new default, unless the setting pins the old value.
    former = config(tmp_path, HNSW_EF_CONSTRUCTION=64)
    engine, url = await fresh_engine(create_database, "index_former_default", former)
    await copy_vectors(dsn(url), clustered_vectors(500, clusters=20), model=MODEL)

    built = await ensure_vector_index(engine, former)
    pinned = await ensure_vector_index(engine, former)
    upgraded = await ensure_vector_index(engine, config(tmp_path))
    async with engine.connect() as connection:
        described = await describe_vector_index(connection)
    await engine.dispose()

    assert built.definition == "hnsw storage=vector m=16 ef_construction=64"
    assert pinned.action == "kept"
    assert upgraded.action == "built"
    assert described == "hnsw storage=vector m=16 ef_construction=128"


async def index_options(connection: AsyncConnection) -> dict[str, list[str]]:
    rows = await connection.exec_driver_sql(
        "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1)",
        ([INDEX_NAME, REGION_INDEX_NAME],),
    )
    return {row.relname: sorted(row.reloptions) for row in rows}


async def test_rows_inserted_after_the_build_are_linked_with_the_insert_candidate_list(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    index = config(tmp_path)
    engine, url = await fresh_engine(create_database, "index_insert_candidates", index)
    await copy_vectors(dsn(url), clustered_vectors(500, clusters=20), model=MODEL)

    built = await ensure_vector_index(engine, index)
    async with engine.connect() as connection:
        after_build = await index_options(connection)
    changed = await ensure_vector_index(engine, config(tmp_path, HNSW_INSERT_EF_CONSTRUCTION=300))
    async with engine.connect() as connection:
        after_change = await index_options(connection)
        described = await describe_vector_index(connection)
    await engine.dispose()

    # Built with the build's list, then set for inserts; a change of the insert list alone
    # does not rebuild.
    assert built.definition == "hnsw storage=vector m=16 ef_construction=128"
    assert after_build == {
        name: ["ef_construction=256", "m=16"] for name in (INDEX_NAME, REGION_INDEX_NAME)
    }
    assert changed.action == "kept"
    assert described == "hnsw storage=vector m=16 ef_construction=128"
    assert after_change == {
        name: ["ef_construction=300", "m=16"] for name in (INDEX_NAME, REGION_INDEX_NAME)
    }


async def test_ivfflat_waits_for_data_then_is_built_with_lists_from_the_row_count(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    index = config(tmp_path, VECTOR_INDEX="ivfflat")
    engine, url = await fresh_engine(create_database, "index_ivfflat", index)

    on_empty = await ensure_vector_index(engine, index)
    vectors = clustered_vectors(IVFFLAT_MIN_ROWS, clusters=50)
    ids = await copy_vectors(dsn(url), vectors, model=MODEL)
    on_startup = await ensure_vector_index(engine, index)
    rebuilt = await ensure_vector_index(engine, index, rebuild=True)
    plan = await explain(engine, index, ids[0])
    await engine.dispose()

    assert on_empty.action == "deferred"  # never trained on an empty table
    assert on_startup.action == "built"
    assert on_startup.definition == f"ivfflat storage=vector lists={IVFFLAT_MIN_ROWS // 1000}"
    assert rebuilt.action == "built"
    assert "Index Scan using images_embedding_vector_idx" in plan


async def test_switching_to_none_drops_the_index(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    hnsw = config(tmp_path)
    engine, _ = await fresh_engine(create_database, "index_none", hnsw)
    await ensure_vector_index(engine, hnsw)

    dropped = await ensure_vector_index(engine, config(tmp_path, VECTOR_INDEX="none"))
    async with engine.connect() as connection:
        remaining = await connection.scalar(
            text("SELECT to_regclass('images_embedding_vector_idx')")
        )
    await engine.dispose()

    assert dropped.action == "dropped"
    assert remaining is None


@pytest.mark.parametrize(
    ("index_kind", "storage"), [("hnsw", "vector"), ("hnsw", "halfvec"), ("none", "vector")]
)
async def test_search_returns_exactly_the_rows_of_an_exact_computation(
    tmp_path: Path, create_database: DatabaseFactory, index_kind: str, storage: str
) -> None:
    index = config(tmp_path, VECTOR_INDEX=index_kind, VECTOR_STORAGE=storage)
    engine, url = await fresh_engine(create_database, f"exact_{index_kind}_{storage}", index)
    vectors = clustered_vectors(600, clusters=30, seed=3)
    ids = await copy_vectors(dsn(url), vectors, model=MODEL)
    await ensure_vector_index(engine, index)
    scores = vectors @ vectors.T

    for query in range(0, 600, 60):
        for limit, threshold in ((10, -1.0), (5, 0.8), (100, 0.85), (3, 0.999)):
            async with engine.connect() as connection:
                matches = await search.find_similar_images(
                    connection,
                    ids[query],
                    search.SearchOptions(MODEL, limit, threshold, 0.9, index),
                )
            others = [i for i in np.argsort(-scores[query]) if i != query]
            expected = [ids[i] for i in others if scores[query, i] >= threshold - 1e-3][:limit]
            assert [m.id for m in matches] == expected, (query, limit, threshold)
    await engine.dispose()


async def test_processes_starting_at_once_share_the_schema_and_index_work(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    """Several server processes (WORKERS, replicas) starting together on a database whose index
    must be built: none may deadlock with another's CREATE INDEX CONCURRENTLY."""
    settings = make_settings(tmp_path)
    engine, url = await fresh_engine(
        create_database, "index_concurrent_start", settings.vector_index
    )
    await copy_vectors(dsn(url), clustered_vectors(3000, clusters=30, seed=5), model=MODEL)
    await engine.dispose()

    async def start_up() -> str:
        database = create_engine(url)
        try:
            await apply_schema(database, embedding_dimension=512)
            return (await prepare_vector_index(url, settings)).action
        finally:
            await database.dispose()

    actions = await asyncio.wait_for(asyncio.gather(*(start_up() for _ in range(3))), timeout=120)

    assert sorted(actions) == ["built", "kept", "kept"]


async def test_a_search_stuck_in_the_graph_scans_wider_and_finds_the_neighbourhood(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2000, clusters=200, seed=4)
    index, engine, ids = await sparse_graph(tmp_path, create_database, "stuck_search", vectors)
    scores = vectors @ vectors.T
    options = search.SearchOptions(MODEL, 5, -1.0, 0.9, index)

    recovered = 0
    async with engine.connect() as connection:
        stuck = await stuck_queries(connection, index, ids)
        for query in stuck:
            matches = await search.find_similar_images(connection, ids[query], options)
            exact = [ids[i] for i in np.argsort(-scores[query]) if i != query][:5]
            recovered += [match.id for match in matches] == exact
    await engine.dispose()

    assert len(stuck) >= 20  # the corpus does defeat the first scan
    assert recovered == len(stuck)


async def test_verification_labels_the_candidates_of_the_final_scan(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2000, clusters=200, seed=4)
    # Every row shows the same flat picture (features of under 1 KB): each candidate verifies.
    flat = extract(Image.new("RGB", (64, 48), (90, 120, 200))).to_bytes()
    index, engine, ids = await sparse_graph(
        tmp_path, create_database, "stuck_verified_search", vectors, local_features=[flat]
    )
    scores = vectors @ vectors.T
    options = search.SearchOptions(MODEL, 5, -1.0, 0.9, index, verification_candidates=5)

    verified = 0
    async with engine.connect() as connection:
        stuck = await stuck_queries(connection, index, ids)
        for query in stuck:
            matches = await search.find_similar_images(connection, ids[query], options)
            exact = [ids[i] for i in np.argsort(-scores[query]) if i != query][:5]
            verified += [match.id for match in matches] == exact and all(
                match.match == "near_duplicate"
                and match.evidence is not None
                and match.evidence.transform == "appearance"
                for match in matches
            )
    await engine.dispose()

    assert len(stuck) >= 20
    assert verified == len(stuck)


async def test_a_search_by_upload_always_finds_a_stored_copy_of_the_same_bytes(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2000, clusters=200, seed=4)
    index, engine, ids = await sparse_graph(
        tmp_path, create_database, "stuck_upload_search", vectors
    )
    options = search.SearchOptions(MODEL, 5, -1.0, 0.9, index)

    missed_by_first_scan, found = 0, 0
    async with engine.connect() as connection:
        for query in range(0, 2000, 10):
            content_hash = ids[query].hex * 2  # how the corpus names its rows' bytes
            first = await connection.exec_driver_sql(
                search.nearest_to_vector_sql(index),
                (vector_text(vectors[query]), MODEL, 5, 2.0, content_hash),
            )
            missed_by_first_scan += ids[query] not in {row.id for row in first.all()}
            matches = await search.search_by_image(
                connection, vectors[query], content_hash, options
            )
            found += matches[0].id == ids[query] and matches[0].match == "exact"
    await engine.dispose()

    assert missed_by_first_scan >= 20
    assert found == 200


async def test_a_search_by_upload_with_nothing_similar_found_scans_wider(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2200, clusters=200, seed=4)
    stored, held_out = vectors[:2000], vectors[2000:]  # queries from the stored clusters
    index, engine, _ = await sparse_graph(tmp_path, create_database, "stuck_held_out", stored)
    options = search.SearchOptions(MODEL, 5, -1.0, 0.9, index, recheck_below=0.6)

    # Every query has neighbours scoring about 0.9: an answer without any above 0.6 is a scan
    # that never reached them (what the user would see as "nothing looks like this").
    first_scan_empty_handed, service_empty_handed = 0, 0
    async with engine.connect() as connection:
        for query in held_out:
            assert float(np.max(stored @ query)) > 0.8
            first = await connection.exec_driver_sql(
                search.nearest_to_vector_sql(index), (vector_text(query), MODEL, 5, 2.0, "")
            )
            first_scan_empty_handed += 1 - first.all()[0].distance < 0.6
            matches = await search.search_by_image(connection, query, "", options)
            service_empty_handed += matches[0].similarity_score < 0.6
    await engine.dispose()

    assert first_scan_empty_handed >= 10
    assert service_empty_handed == 0


async def test_a_search_by_upload_scans_wide_enough_to_return_the_exact_nearest(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2200, clusters=200, seed=4)
    stored, held_out = vectors[:2000], vectors[2000:]
    index, engine, ids = await sparse_graph(tmp_path, create_database, "wide_upload_search", stored)
    options = search.SearchOptions(MODEL, 5, -1.0, 0.9, index, recheck_below=0.6)

    # A scan at this index's ef_search (2) returns the nearest five of hardly any query, even
    # where it finds something similar: an upload's search scans at the first retry's width.
    first_scans_exact, service_exact = 0, 0
    async with engine.connect() as connection:
        for query in held_out:
            exact = [ids[i] for i in np.argsort(-(stored @ query))[:5]]
            first = await connection.exec_driver_sql(
                search.nearest_to_vector_sql(index), (vector_text(query), MODEL, 5, 2.0, "")
            )
            first_scans_exact += [row.id for row in first.all()] == exact
            matches = await search.search_by_image(connection, query, "", options)
            service_exact += [match.id for match in matches] == exact
    await engine.dispose()

    assert first_scans_exact < 100
    assert service_exact == len(held_out)


async def test_a_search_that_finds_the_image_but_nothing_like_it_scans_wider(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(2000, clusters=200, seed=4)
    index, engine, ids = await sparse_graph(tmp_path, create_database, "lonely_search", vectors)
    options = search.SearchOptions(MODEL, 5, 0.6, 0.9, index, recheck_below=0.6)

    # Every image has neighbours scoring about 0.8 to 0.9 (its cluster).
    lonely_first_scans, empty_answers = 0, 0
    async with engine.connect() as connection:
        for query in range(0, 2000, 5):
            first = await index_scan(connection, index, ids[query], largest_distance=0.4)
            lonely_first_scans += first.self_found and first.id is None
            matches = await search.find_similar_images(connection, ids[query], options)
            empty_answers += not matches
    await engine.dispose()

    assert lonely_first_scans >= 5
    assert empty_answers == 0


async def test_a_search_still_lost_at_the_wider_scan_goes_on_to_the_widest(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    # On 20,000 rows a scan at the wider width (ef_search 400) still ends in another cluster
    # now and then, having found the query image there (its own links lead there).
    vectors = clustered_vectors(20_000, clusters=2000, seed=4)
    index, engine, ids = await sparse_graph(tmp_path, create_database, "lost_at_wider", vectors)
    options = search.SearchOptions(MODEL, 5, 0.6, 0.9, index, recheck_below=0.6)

    async def scan(connection: AsyncConnection, query: uuid.UUID, ef: int) -> tuple[bool, bool]:
        """Whether one index scan at ef_search `ef` finds the query image, and anything scoring
        0.6 or more besides it."""
        first = await index_scan(connection, index, query, ef_search=ef)
        return bool(first.self_found), 1 - first.best_distance >= 0.6

    # Every image has neighbours scoring about 0.9 (its cluster).
    reachable, answered = 0, 0
    async with engine.connect() as connection:
        for query in ids[::5]:
            if await scan(connection, query, search.WIDER_EF_SEARCH_FLOOR) != (True, False):
                continue
            if await scan(connection, query, search.MAX_EF_SEARCH) == (True, True):
                reachable += 1
                answered += bool(await search.find_similar_images(connection, query, options))
    await engine.dispose()

    # The corpus does defeat the wider scan, in a way the widest one recovers.
    assert reachable >= 1
    assert answered == reachable


@pytest.mark.parametrize(
    ("settings", "scans"),
    [
        # The first scan, then ef_search 400 and 1000.
        ({}, 3),
        # ef_search 250: the wider scan (times 4) is already pgvector's widest, run once.
        ({"HNSW_EF_SEARCH": 250}, 2),
        # IVFFlat has no graph to lead a scan astray: wider probes once.
        ({"VECTOR_INDEX": "ivfflat"}, 2),
    ],
    ids=["hnsw", "hnsw-ef-search-250", "ivfflat"],
)
async def test_an_image_with_nothing_like_it_is_scanned_wider_but_never_exactly(
    tmp_path: Path, create_database: DatabaseFactory, settings: dict[str, object], scans: int
) -> None:
    index = config(tmp_path, **settings)
    name = f"image_alone_{index.kind}_{index.hnsw_ef_search}"
    engine, url = await fresh_engine(create_database, name, index)
    vectors = clustered_vectors(IVFFLAT_MIN_ROWS, clusters=200, seed=4)
    # A direction of its own: it scores about 0 with every other image.
    alone = np.random.default_rng(9).standard_normal(512).astype(np.float32)
    alone /= np.linalg.norm(alone)
    assert float(np.max(vectors @ alone)) < 0.3
    ids = await copy_vectors(dsn(url), np.vstack([vectors, alone]), model=MODEL)
    await ensure_vector_index(engine, index)
    options = search.SearchOptions(MODEL, 5, 0.6, 0.9, index, recheck_below=0.6)

    async with engine.connect() as connection:
        by_alone = await search.search_stored_image(connection, ids[-1], options)
        by_clustered = await search.search_stored_image(connection, ids[0], options)
    await engine.dispose()

    # Nothing scores 0.6: the wider scans say so too, and the search ends there with an empty
    # answer (a single row of NULL matches), without reading every row.
    assert (by_alone.scans, by_alone.exact, by_alone.self_found) == (scans, False, True)
    assert [row.id for row in by_alone.rows] == [None]
    assert (by_clustered.scans, len(by_clustered.rows)) == (1, 5)


async def test_an_exact_scan_past_its_time_budget_gives_way_to_the_widest_index_scan(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    vectors = clustered_vectors(20_000, clusters=200, seed=5)
    # pgvector leaves a vector of norm 0 out of a cosine index: no index scan ever reaches
    # this image, so every search by it goes all the way to the exact scan.
    vectors[0] = 0.0
    index, engine, ids = await sparse_graph(tmp_path, create_database, "exact_budget", vectors)
    # Reading 20,000 rows of 512 numbers takes well over a millisecond.
    bounded = search.SearchOptions(MODEL, 5, -1.0, 0.9, index, exact_scan_seconds=0.001)
    unbounded = search.SearchOptions(MODEL, 5, -1.0, 0.9, index)

    async with engine.connect() as connection:
        cut_short = await search.search_stored_image(connection, ids[0], bounded)
        finished = await search.search_stored_image(connection, ids[0], unbounded)
        # The connection is still fit for use, with its own settings back.
        after = await search.search_stored_image(connection, ids[1], unbounded)
        timeout = (await connection.exec_driver_sql("SHOW statement_timeout")).scalar_one()
    await engine.dispose()

    assert (cut_short.scans, cut_short.exact, cut_short.complete) == (4, True, False)
    assert not cut_short.self_found
    assert cut_short.rows[0].query_model == MODEL  # an answer (the widest scan's), no error
    assert (finished.scans, finished.exact, finished.complete) == (4, True, True)
    assert after.self_found and after.complete
    assert timeout == "0"
