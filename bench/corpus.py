"""Clustered unit vectors and a COPY loader, for the search benchmark and the index tests.

Real embeddings are clustered (photos of the same scene, near-duplicates); i.i.d. random vectors
are all nearly orthogonal and make any index look either perfect or hopeless.
"""

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from numpy.typing import NDArray
from pgvector.asyncpg import register_vector

from app.models.image import ImageRow, images

COLUMNS = [column.name for column in images.columns]


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


def synthetic_row(
    vector: NDArray[np.float32],
    *,
    model: str,
    number: int = 0,
    now: datetime | None = None,
    local_features: bytes | None = None,
) -> ImageRow:
    """A row of `images` for a vector alone (no file): what the index tests and the search
    benchmark store. Later numbers are older uploads."""
    now = now or datetime.now(UTC)
    image_id = uuid.uuid4()
    return ImageRow(
        id=image_id,
        filename=f"synthetic-{number}.jpg",
        original_filename=f"synthetic-{number}.jpg",
        content_type="image/jpeg",
        file_size=1,
        file_path=None,
        content_hash=image_id.hex * 2,
        format="JPEG",
        width=1,
        height=1,
        upload_timestamp=now - timedelta(microseconds=number),
        processed_timestamp=now,
        embedding_vector=vector,
        embedding_model=model,
        metadata={"embedding": {"model": model, "dimension": len(vector)}},
        processing_status="completed",
        local_features=local_features,
    )


def _copy_record(row: ImageRow) -> tuple[object, ...]:
    # COPY takes JSONB as text; everything else as the row holds it.
    encoded = {**row, "metadata": json.dumps(row["metadata"])}
    return tuple(encoded[column] for column in COLUMNS)


async def copy_vectors(
    dsn: str,
    vectors: NDArray[np.float32],
    *,
    model: str,
    local_features: Sequence[bytes] = (),
) -> list[uuid.UUID]:
    """Load one row per vector with COPY (binary); returns the new ids in order. Rows take
    their local features from `local_features` in turn (none if empty)."""
    connection = await asyncpg.connect(dsn)
    try:
        await register_vector(connection)
        now = datetime.now(UTC)
        rows = [
            synthetic_row(
                vector,
                model=model,
                number=number,
                now=now,
                local_features=local_features[number % len(local_features)]
                if local_features
                else None,
            )
            for number, vector in enumerate(vectors)
        ]
        records = [_copy_record(row) for row in rows]
        await connection.copy_records_to_table("images", records=records, columns=COLUMNS)
        await connection.execute("ANALYZE images")
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def copy_regions(
    dsn: str, ids: Sequence[uuid.UUID], vectors: NDArray[np.float32], *, model: str
) -> None:
    """Load region vectors (REGION_VECTORS) with COPY: `vectors` is len(ids) x regions x
    dimension, row i's regions numbered 0, 1, ... in order."""
    connection = await asyncpg.connect(dsn)
    try:
        await register_vector(connection)
        records = [
            (image_id, number, model, vector)
            for image_id, parts in zip(ids, vectors, strict=True)
            for number, vector in enumerate(parts)
        ]
        await connection.copy_records_to_table(
            "image_regions",
            records=records,
            columns=["image_id", "region", "embedding_model", "embedding_vector"],
        )
        await connection.execute("ANALYZE image_regions")
    finally:
        await connection.close()
