"""Clustered unit vectors and a COPY loader, for the search benchmark and the index tests.

Real embeddings are clustered (photos of the same scene, near-duplicates); i.i.d. random vectors
are all nearly orthogonal and make any index look either perfect or hopeless.
"""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from numpy.typing import NDArray
from pgvector.asyncpg import register_vector

COLUMNS = (
    "id",
    "filename",
    "original_filename",
    "content_type",
    "file_size",
    "file_path",
    "content_hash",
    "format",
    "width",
    "height",
    "upload_timestamp",
    "processed_timestamp",
    "embedding_vector",
    "embedding_model",
    "metadata",
    "processing_status",
)


def clustered_vectors(
    count: int, *, dimension: int = 512, clusters: int = 1000, spread: float = 0.35, seed: int = 0
) -> NDArray[np.float32]:
    """`count` unit vectors around `clusters` random centres (cosine to the centre ~0.9)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((count, dimension), dtype=np.float32)
    for start in range(0, count, 50_000):
        stop = min(count, start + 50_000)
        members = centres[rng.integers(0, clusters, size=stop - start)]
        noise = rng.standard_normal((stop - start, dimension)).astype(np.float32)
        chunk = members + noise * (spread / np.sqrt(dimension))
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def _records(vectors: NDArray[np.float32], model: str) -> Iterator[tuple[object, ...]]:
    now = datetime.now(UTC)
    metadata = json.dumps({"embedding": {"model": model, "dimension": vectors.shape[1]}})
    for number, vector in enumerate(vectors):
        image_id = uuid.uuid4()
        yield (
            image_id,
            f"synthetic-{number}.jpg",
            f"synthetic-{number}.jpg",
            "image/jpeg",
            1,
            None,
            image_id.hex * 2,
            "JPEG",
            1,
            1,
            now - timedelta(microseconds=number),
            now,
            vector,
            model,
            metadata,
            "completed",
        )


async def copy_vectors(dsn: str, vectors: NDArray[np.float32], *, model: str) -> list[uuid.UUID]:
    """Load one row per vector with COPY (binary); returns the new ids in order."""
    connection = await asyncpg.connect(dsn)
    try:
        await register_vector(connection)
        records = list(_records(vectors, model))
        await connection.copy_records_to_table("images", records=records, columns=COLUMNS)
        await connection.execute("ANALYZE images")
    finally:
        await connection.close()
    return [record[0] for record in records]  # type: ignore[misc]
