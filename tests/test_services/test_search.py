"""Similarity search against pgvector with vectors chosen by the test."""

import uuid

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.core.vector_index import parse_vector, vector_text
from app.errors import EmbeddingOutdated, ImageNotFound
from app.services import search
from tests.support.database import insert_image

DIMENSION = 512
MODEL = "test"
INDEX = Settings.model_validate({}).vector_index


def unit(vector: NDArray[np.float64]) -> NDArray[np.float32]:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


async def add_image(
    connection: AsyncConnection, vector: NDArray[np.float32], model: str = MODEL
) -> uuid.UUID:
    return await insert_image(connection, vector, model=model)


async def similar_to(
    connection: AsyncConnection, query: uuid.UUID, *, limit: int, threshold: float
) -> list[search.SimilarMatch]:
    options = search.SearchOptions(
        model=MODEL, limit=limit, threshold=threshold, near_duplicate_threshold=0.9, index=INDEX
    )
    return await search.find_similar_images(connection, query, options)


@pytest.fixture
def base() -> NDArray[np.float64]:
    return np.random.default_rng(7).standard_normal(DIMENSION)


async def test_results_are_ranked_by_cosine_similarity(
    connection: AsyncConnection, base: NDArray[np.float64]
) -> None:
    rng = np.random.default_rng(8)
    query = await add_image(connection, unit(base))
    # Progressively noisier copies of the query vector: less and less similar.
    ids = [
        await add_image(connection, unit(base + noise * rng.standard_normal(DIMENSION)))
        for noise in (0.1, 0.5, 1.0, 3.0)
    ]

    matches = await similar_to(connection, query, limit=10, threshold=-1.0)

    assert [match.id for match in matches] == ids
    assert matches[0].similarity_score == pytest.approx(0.995, abs=0.01)
    assert all(-1.0 <= match.similarity_score <= 1.0 for match in matches)


async def test_threshold_limit_and_exclusion_of_the_query(
    connection: AsyncConnection, base: NDArray[np.float64]
) -> None:
    query = await add_image(connection, unit(base))
    copy = await add_image(connection, unit(base))  # identical vector: score 1.0
    await add_image(connection, unit(-base))  # opposite: score -1.0

    at_one = await similar_to(connection, query, limit=10, threshold=1.0)
    everything = await similar_to(connection, query, limit=10, threshold=-1)
    one = await similar_to(connection, query, limit=1, threshold=-1)

    assert [match.id for match in at_one] == [copy]
    assert len(everything) == 2
    assert query not in [match.id for match in everything]
    assert everything[-1].similarity_score == pytest.approx(-1.0, abs=1e-5)
    assert [match.id for match in one] == [copy]


async def test_limit_of_100_returns_100_results(connection: AsyncConnection) -> None:
    # More than the HNSW default ef_search (40): the search widens it to the limit.
    rng = np.random.default_rng(9)
    query = await add_image(connection, unit(rng.standard_normal(DIMENSION)))
    for _ in range(120):
        await add_image(connection, unit(rng.standard_normal(DIMENSION)))

    await connection.execute(text("SET LOCAL enable_seqscan = off"))  # make the planner use HNSW
    matches = await similar_to(connection, query, limit=100, threshold=-1)

    assert len(matches) == 100


async def test_unknown_query_image_raises_not_found(connection: AsyncConnection) -> None:
    with pytest.raises(ImageNotFound):
        await similar_to(connection, uuid.uuid4(), limit=5, threshold=0.5)


async def test_only_embeddings_of_the_current_model_are_compared(
    connection: AsyncConnection, base: NDArray[np.float64]
) -> None:
    query = await add_image(connection, unit(base))
    same_model = await add_image(connection, unit(base + 0.5))
    await add_image(connection, unit(base), model="older")  # identical vector, other model

    matches = await similar_to(connection, query, limit=10, threshold=-1)

    assert [match.id for match in matches] == [same_model]


async def test_a_query_image_from_another_model_is_reported_outdated(
    connection: AsyncConnection, base: NDArray[np.float64]
) -> None:
    query = await add_image(connection, unit(base), model="older")
    with pytest.raises(EmbeddingOutdated, match="reembed"):
        await similar_to(connection, query, limit=10, threshold=-1)


def test_vector_text_gives_back_every_float32_exactly() -> None:
    vectors = np.random.default_rng(3).standard_normal((200, DIMENSION)).astype(np.float32)
    vectors[0, :3] = np.array([1e-38, -3.4e38, 0.0], dtype=np.float32)  # extremes survive too

    for vector in vectors:
        text = vector_text(vector)
        assert np.array_equal(parse_vector(text), vector)
