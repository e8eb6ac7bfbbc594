"""Image records: ingest, read, list and delete. Owns the consistency between rows and files."""

import asyncio
import errno
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from starlette.concurrency import run_in_threadpool

from app.core.database import Transactions
from app.models.image import Image
from app.services.embeddings import Embedder
from app.services.errors import (
    EmptyFile,
    FileTooLarge,
    ImageFileMissing,
    ImageNotFound,
    StorageFull,
    StorageUnavailable,
)
from app.services.image_processing import CONTROL_CHARACTERS, AnalysedImage, analyse_image
from app.services.storage import ImageStore
from app.services.vector_service import vector_text

logger = logging.getLogger(__name__)

_MAX_FILENAME_LENGTH = 255


@dataclass(frozen=True)
class UploadLimits:
    max_file_size: int
    max_pixels: int
    max_frames: int
    allowed_formats: frozenset[str]


@dataclass(frozen=True)
class IngestResult:
    image_id: uuid.UUID
    filename: str
    created: bool
    analysis_seconds: float


def clean_original_filename(filename: str | None) -> str:
    return CONTROL_CHARACTERS.sub("", filename or "").strip()[:_MAX_FILENAME_LENGTH]


def safe_filename(filename: str | None, extension: str) -> str:
    """The client's filename reduced to a harmless display name: no directories, no control
    characters, bounded length. It is metadata only and never used to build a path."""
    base = clean_original_filename(filename).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in {"", ".", ".."}:
        base = f"image{extension}"
    return base[:_MAX_FILENAME_LENGTH]


# One transaction-scoped advisory lock per content hash serialises the writers of one file (an
# upload and a delete of the same bytes). $1 is the hash.
_LOCK_CONTENT_HASH = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


async def analyse_upload(
    data: bytes, *, limits: UploadLimits, embedder: Embedder, image_workers: asyncio.Semaphore
) -> AnalysedImage:
    """Check the upload's limits, then validate and embed it off the event loop."""
    if len(data) > limits.max_file_size:
        raise FileTooLarge(limits.max_file_size)
    if not data:
        raise EmptyFile()
    # At most IMAGE_WORKERS decodes at once, so CPU work queues up instead of starving the
    # event loop (and the searches it serves). No database connection is held meanwhile.
    async with image_workers:
        return await run_in_threadpool(
            analyse_image,
            data,
            allowed_formats=limits.allowed_formats,
            max_pixels=limits.max_pixels,
            max_frames=limits.max_frames,
            embedder=embedder,
        )


async def ingest_image(
    transactions: Transactions,
    *,
    data: bytes,
    filename: str | None,
    limits: UploadLimits,
    store: ImageStore,
    embedder: Embedder,
    image_workers: asyncio.Semaphore,
) -> IngestResult:
    """Validate, embed and store an upload. Identical bytes already stored return that record.

    Order: analyse (off the event loop, no connection held), then in one transaction: lock the
    hash, look for the same bytes, write the file (staged, fsynced, renamed), insert the row,
    commit. Any failure after the file is written removes it again, so nothing is left half
    done; a commit that returned means the upload is durable.
    """
    received_at = datetime.now(UTC)
    analysed = await analyse_upload(
        data, limits=limits, embedder=embedder, image_workers=image_workers
    )
    relative_path: str | None = None
    inserted = False
    try:
        async with transactions.transaction() as connection:
            await connection.execute(_LOCK_CONTENT_HASH, analysed.content_hash)
            existing = await connection.fetchrow(
                "SELECT id, filename FROM images WHERE content_hash = $1", analysed.content_hash
            )
            if existing is not None:
                return IngestResult(
                    existing["id"],
                    existing["filename"],
                    created=False,
                    analysis_seconds=analysed.seconds,
                )
            image_id = uuid.uuid4()
            display_name = safe_filename(filename, analysed.extension)
            relative_path = store.relative_path(analysed.content_hash, analysed.extension)
            await _write_file(store, data, relative_path)
            await connection.execute(
                _INSERT_IMAGE,
                image_id,
                display_name,
                clean_original_filename(filename) or f"image{analysed.extension}",
                analysed.content_type,
                len(data),
                relative_path,
                analysed.content_hash,
                analysed.format,
                analysed.width,
                analysed.height,
                received_at,
                datetime.now(UTC),
                vector_text(analysed.embedding),
                embedder.name,
                json.dumps(analysed.metadata),
            )
            inserted = True  # only the commit is left
    except BaseException as exc:
        if relative_path is not None and not (inserted and _commit_outcome_unknown(exc)):
            _discard_file(store, relative_path)
        raise
    return IngestResult(image_id, display_name, created=True, analysis_seconds=analysed.seconds)


_INSERT_IMAGE = """
    INSERT INTO images (
        id, filename, original_filename, content_type, file_size, file_path, content_hash,
        format, width, height, upload_timestamp, processed_timestamp, embedding_vector,
        embedding_model, metadata, processing_status
    ) VALUES (
        $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::vector, $14, $15::jsonb,
        'completed'
    )
"""


async def _write_file(store: ImageStore, data: bytes, relative_path: str) -> None:
    try:
        await run_in_threadpool(store.write, data, relative_path)
    except OSError as exc:
        raise (StorageFull() if exc.errno == errno.ENOSPC else StorageUnavailable()) from exc


def _commit_outcome_unknown(exc: BaseException) -> bool:
    """Whether a COMMIT that raised `exc` may have been applied anyway (the connection died, or
    the wait for the answer was cut short). Its file is then kept: if the row does not exist,
    the storage sweep removes the file later. An error PostgreSQL answered with means the
    transaction was not committed."""
    return isinstance(exc, (asyncpg.InterfaceError, OSError, TimeoutError, asyncio.CancelledError))


def _discard_file(store: ImageStore, relative_path: str) -> None:
    # Synchronous on purpose: it must also run while the request task is being cancelled.
    try:
        store.remove(relative_path)
    except OSError:
        logger.warning("could not remove %s after a failed upload", relative_path)


async def get_image(session: AsyncSession, image_id: uuid.UUID) -> Image:
    image = await session.scalar(
        select(Image).options(defer(Image.embedding_vector)).where(Image.id == image_id)
    )
    if image is None:
        raise ImageNotFound(image_id)
    return image


@dataclass(frozen=True)
class ImageFilter:
    content_type: str | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None


async def get_stored_file(
    session: AsyncSession, image_id: uuid.UUID, *, store: ImageStore
) -> tuple[Image, Path]:
    """The image's record and the path of its file (ImageFileMissing if the file is gone)."""
    image = await get_image(session, image_id)
    if image.file_path is None or not store.exists(image.file_path):
        raise ImageFileMissing(image_id)
    return image, store.absolute_path(image.file_path)


async def list_images(
    session: AsyncSession, *, skip: int, limit: int, where: ImageFilter = ImageFilter()
) -> tuple[list[Image], int]:
    """A page of images, newest first (ties broken by id, so pages never overlap), and the
    number of images matching the filter."""
    conditions = []
    if where.content_type is not None:
        conditions.append(Image.content_type == where.content_type)
    if where.uploaded_after is not None:
        conditions.append(Image.upload_timestamp >= where.uploaded_after)
    if where.uploaded_before is not None:
        conditions.append(Image.upload_timestamp < where.uploaded_before)
    total = await session.scalar(select(func.count()).select_from(Image).where(*conditions)) or 0
    images = await session.scalars(
        select(Image)
        .options(defer(Image.embedding_vector))
        .where(*conditions)
        .order_by(Image.upload_timestamp.desc(), Image.id.desc())
        .offset(skip)
        .limit(limit)
    )
    return list(images), total


async def delete_image(session: AsyncSession, image_id: uuid.UUID, *, store: ImageStore) -> None:
    """Delete the row, commit, then remove the file unless the same bytes were re-uploaded."""
    deleted = await session.execute(
        delete(Image).where(Image.id == image_id).returning(Image.content_hash, Image.file_path)
    )
    row = deleted.one_or_none()
    if row is None:
        raise ImageNotFound(image_id)
    content_hash, relative_path = row
    await session.commit()
    if relative_path is None:
        return
    # Under the hash's lock, so a concurrent upload of the same bytes cannot lose its file.
    await (await session.connection()).exec_driver_sql(_LOCK_CONTENT_HASH, (content_hash,))
    reuploaded = await session.scalar(select(exists().where(Image.content_hash == content_hash)))
    if not reuploaded:
        await run_in_threadpool(store.remove, relative_path)
        await run_in_threadpool(store.remove_thumbnails, content_hash)
    await session.commit()


async def count_stale_embeddings(session: AsyncSession, *, model: str) -> int:
    """How many stored images were embedded with another model than `model`."""
    return (
        await session.scalar(
            select(func.count()).select_from(Image).where(Image.embedding_model != model)
        )
        or 0
    )


async def count_by_model(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Image.embedding_model, func.count()).group_by(Image.embedding_model)
    )
    return {model: count for model, count in rows.tuples()}


async def count_images(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(Image)) or 0
