"""The upload transaction: validate and embed off the event loop, then write file and row so that
a failed upload leaves nothing behind and an acknowledged one is durable."""

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.database import is_database_unavailable, transaction
from app.core.resources import UploadPolicy
from app.core.storage import ImageStore, image_key
from app.errors import EmptyFile, FileTooLarge, StorageUnavailable
from app.imaging.analysis import AnalysedImage, analyse_image, clean_text
from app.imaging.embeddings import Embedder
from app.models.image import ImageRow, image_regions, images
from app.services.images import lock_content_hash

logger = logging.getLogger(__name__)

_MAX_FILENAME_LENGTH = 255


@dataclass(frozen=True)
class IngestResult:
    image_id: uuid.UUID
    filename: str
    created: bool
    analysis_seconds: float


def clean_original_filename(filename: str | None) -> str:
    """The name as sent, storable, without control characters, shortened to
    _MAX_FILENAME_LENGTH characters (it is metadata only)."""
    return clean_text(filename, _MAX_FILENAME_LENGTH) or ""


def safe_filename(filename: str | None, extension: str) -> str:
    """The client's filename reduced to a harmless display name: no directories, no control
    characters, bounded length. It is metadata only and never used to build a path."""
    base = clean_original_filename(filename).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in {"", ".", ".."}:
        base = f"image{extension}"
    return base[:_MAX_FILENAME_LENGTH]


async def analyse_upload(
    data: bytes, *, policy: UploadPolicy, embedder: Embedder, decode_slots: asyncio.Semaphore
) -> AnalysedImage:
    """Check the upload against `policy`, then validate and embed it off the event loop.

    Raises FileTooLarge, EmptyFile, or what `analyse_image` raises."""
    if len(data) > policy.max_file_size:
        raise FileTooLarge(policy.max_file_size)
    if not data:
        raise EmptyFile()
    # No database connection is needed meanwhile: decoding waits for a slot, not a connection.
    async with decode_slots:
        return await run_in_threadpool(
            analyse_image,
            data,
            allowed_formats=policy.allowed_formats,
            max_pixels=policy.max_pixels,
            max_frames=policy.max_frames,
            embedder=embedder,
            local_features=policy.local_features,
            regions=policy.regions,
        )


async def ingest_image(
    connection: AsyncConnection,
    *,
    data: bytes,
    filename: str | None,
    policy: UploadPolicy,
    store: ImageStore,
    embedder: Embedder,
    decode_slots: asyncio.Semaphore,
) -> IngestResult:
    """Validate, embed and store an upload. Identical bytes already stored return that record.

    Order: analyse (off the event loop), then in one transaction: lock the hash, look for the
    same bytes, write the object (create-only), insert the row, commit. Any failure after the
    object is written removes it again, so nothing is left half done; a commit that returned
    means the upload is durable. Raises StorageUnavailable (503) or StorageFull (507) when the
    store refuses the write.
    """
    received_at = datetime.now(UTC)
    analysed = await analyse_upload(
        data, policy=policy, embedder=embedder, decode_slots=decode_slots
    )
    written_key: str | None = None  # set once this upload has created the object
    inserted = False
    try:
        async with transaction(connection):
            await lock_content_hash(connection, analysed.content_hash)
            existing = (
                await connection.execute(
                    select(images.c.id, images.c.filename).where(
                        images.c.content_hash == analysed.content_hash
                    )
                )
            ).one_or_none()
            if existing is not None:
                return IngestResult(
                    existing.id, existing.filename, False, analysis_seconds=analysed.seconds
                )
            display_name = safe_filename(filename, analysed.extension)
            key = image_key(analysed.content_hash, analysed.extension)
            # False: an object of these very bytes was already there (left by an upload whose
            # commit outcome was unknown, or by a delete that could not reach the store). No
            # row names it and the hash is locked, so this row adopts it; it is not removed
            # if this upload fails (the sweep decides).
            if await store.put(
                key, data, content_type=analysed.content_type, filename=display_name
            ):
                written_key = key
            row = ImageRow(
                id=uuid.uuid4(),
                filename=display_name,
                original_filename=clean_original_filename(filename) or display_name,
                content_type=analysed.content_type,
                file_size=len(data),
                file_path=key,
                content_hash=analysed.content_hash,
                format=analysed.format,
                width=analysed.width,
                height=analysed.height,
                upload_timestamp=received_at,
                processed_timestamp=datetime.now(UTC),
                embedding_vector=analysed.embedding,
                embedding_model=embedder.name,
                metadata=analysed.metadata,
                processing_status="completed",
                local_features=analysed.local_features,
            )
            await connection.execute(insert(images).values(row))
            await insert_regions(connection, row["id"], embedder.name, analysed.regions)
            inserted = True  # only the commit is left
    except BaseException as exc:
        if written_key is not None and not (inserted and _commit_outcome_unknown(exc)):
            await _discard_object(store, written_key)
        raise
    return IngestResult(row["id"], display_name, True, analysis_seconds=analysed.seconds)


async def insert_regions(
    connection: AsyncConnection,
    image_id: uuid.UUID,
    model: str,
    regions: NDArray[np.float32] | None,
) -> None:
    """Store an image's region vectors (none to store: nothing happens)."""
    if regions is None or not len(regions):
        return
    # One multi-row INSERT: one round trip whatever the number of regions.
    await connection.execute(
        insert(image_regions).values(
            [
                {
                    "image_id": image_id,
                    "region": number,
                    "embedding_model": model,
                    "embedding_vector": v,
                }
                for number, v in enumerate(regions)
            ]
        )
    )


def _commit_outcome_unknown(exc: BaseException) -> bool:
    """Whether a COMMIT that raised `exc` may have been applied anyway (the connection died, or
    the wait for the answer was cut short). Its file is then kept: if the row does not exist,
    the storage sweep removes the file later. An error PostgreSQL answered with means the
    transaction was not committed."""
    return isinstance(exc, asyncio.CancelledError) or is_database_unavailable(exc)


# Removals in flight, kept referenced until they finish (the event loop holds tasks weakly).
_DISCARDS: set[asyncio.Task[None]] = set()


async def _discard_object(store: ImageStore, key: str) -> None:
    """Remove the object of a failed upload. In a task of its own, shielded: it must finish
    even while the request's task is being cancelled. If the store cannot be reached, the
    object stays until the sweep removes it (no row names it)."""

    async def remove() -> None:
        try:
            await store.delete(key)
        except StorageUnavailable:
            logger.warning("could not remove %s after a failed upload; the sweep will", key)

    task = asyncio.create_task(remove())
    _DISCARDS.add(task)
    task.add_done_callback(_DISCARDS.discard)
    # Cancelled while waiting: the task goes on, and the caller re-raises its own exception.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
