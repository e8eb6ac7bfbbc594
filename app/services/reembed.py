"""Recompute stored embeddings with the current model (and the local features verification
needs and the region vectors, when they are on), from the stored files.

Resumable by construction: only rows whose `embedding_model` differs from the current model (or,
with `local_features`, that have none; with `regions`, that have no region vectors of the
current model) are selected, and each batch is committed on its own,
so an interrupted run continues where it stopped. Searches keep working meanwhile (they compare
only embeddings of the current model).
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.concurrency import run_in_threadpool

from app.core.database import transaction
from app.core.storage import ImageStore, ObjectMissing
from app.errors import ServiceError
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import Embedder
from app.imaging.formats import BY_NAME
from app.models.image import image_regions, images
from app.services.images import count_stale_embeddings, stale_rows
from app.services.ingest import insert_regions

ProgressCallback = Callable[["ReembedProgress"], None]


@dataclass
class ReembedProgress:
    total: int
    updated: int = 0
    failed: int = 0

    @property
    def processed(self) -> int:
        return self.updated + self.failed


async def reembed_images(
    engine: AsyncEngine,
    *,
    store: ImageStore,
    embedder: Embedder,
    max_pixels: int,
    batch_size: int = 100,
    on_progress: ProgressCallback | None = None,
    local_features: bool = False,
    regions: bool = False,
) -> ReembedProgress:
    async with engine.connect() as connection:
        total = await count_stale_embeddings(
            connection, model=embedder.name, local_features=local_features, regions=regions
        )
    progress = ReembedProgress(total=total)
    after: uuid.UUID | None = None
    while True:
        async with engine.connect() as connection, transaction(connection):
            query = (
                select(images.c.id, images.c.file_path, images.c.metadata)
                .where(stale_rows(embedder.name, local_features=local_features, regions=regions))
                .order_by(images.c.id)
                .limit(batch_size)
            )
            if after is not None:
                query = query.where(images.c.id > after)
            batch = (await connection.execute(query)).all()
            if not batch:
                return progress
            for image_id, relative_path, metadata in batch:
                if await _reembed_one(
                    connection,
                    image_id,
                    relative_path,
                    metadata,
                    store,
                    embedder,
                    max_pixels,
                    local_features=local_features,
                    regions=regions,
                ):
                    progress.updated += 1
                else:
                    progress.failed += 1
            after = batch[-1][0]
        if on_progress is not None:
            on_progress(progress)


async def _reembed_one(
    connection: AsyncConnection,
    image_id: uuid.UUID,
    relative_path: str | None,
    metadata: dict[str, object],
    store: ImageStore,
    embedder: Embedder,
    max_pixels: int,
    *,
    local_features: bool,
    regions: bool,
) -> bool:
    if relative_path is None:
        return False
    try:
        data = await store.get(relative_path)
        analysed = await run_in_threadpool(
            analyse_image,
            data,
            allowed_formats=frozenset(BY_NAME),
            max_pixels=max_pixels,
            embedder=embedder,
            local_features=local_features,
            regions=regions,
        )
    except (ObjectMissing, ServiceError):
        # Missing or unreadable file, or a store out of reach: left as it is, reported as failed.
        return False
    await connection.execute(
        update(images)
        .where(images.c.id == image_id)
        .values(
            embedding_vector=analysed.embedding,
            embedding_model=embedder.name,
            metadata={**metadata, "embedding": analysed.metadata["embedding"]},
            local_features=analysed.local_features,
            processed_timestamp=datetime.now(UTC),
        )
    )
    # The old model's regions (or, with regions off, any) go; the new ones take their place.
    await connection.execute(delete(image_regions).where(image_regions.c.image_id == image_id))
    await insert_regions(connection, image_id, embedder.name, analysed.regions)
    return True
