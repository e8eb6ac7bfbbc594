"""Image records: read, list, delete, count; the stored file and its thumbnails."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, Row, delete, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.database import transaction
from app.core.storage import ImageStore
from app.errors import ImageFileMissing, ImageNotFound
from app.imaging.thumbnail import ThumbnailFormat, render_thumbnail
from app.models.image import RECORD_COLUMNS, images

# One transaction-scoped advisory lock per content hash serialises the writers of one file (an
# upload and a delete of the same bytes).
_LOCK_CONTENT_HASH = text("SELECT pg_advisory_xact_lock(hashtextextended(:hash, 0))")


async def lock_content_hash(connection: AsyncConnection, content_hash: str) -> None:
    """Hold the hash's lock until the current transaction ends."""
    await connection.execute(_LOCK_CONTENT_HASH, {"hash": content_hash})


async def get_image(connection: AsyncConnection, image_id: uuid.UUID) -> Row[tuple[object, ...]]:
    """The image's record (every column but the vector); ImageNotFound if there is none."""
    image = (
        await connection.execute(select(*RECORD_COLUMNS).where(images.c.id == image_id))
    ).one_or_none()
    if image is None:
        raise ImageNotFound(image_id)
    return image


@dataclass(frozen=True)
class ImageFilter:
    content_type: str | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None


async def get_stored_file(
    connection: AsyncConnection, image_id: uuid.UUID, *, store: ImageStore
) -> tuple[Row[tuple[object, ...]], Path]:
    """The image's record and the path of its file (ImageFileMissing if the file is gone)."""
    image = await get_image(connection, image_id)
    if image.file_path is None or not store.exists(image.file_path):
        raise ImageFileMissing(image_id)
    return image, store.absolute_path(image.file_path)


async def list_images(
    connection: AsyncConnection, *, skip: int, limit: int, where: ImageFilter = ImageFilter()
) -> tuple[list[Row[tuple[object, ...]]], int]:
    """A page of images, newest first (ties broken by id, so pages never overlap), and the
    number of images matching the filter."""
    conditions = []
    if where.content_type is not None:
        conditions.append(images.c.content_type == where.content_type)
    if where.uploaded_after is not None:
        conditions.append(images.c.upload_timestamp >= where.uploaded_after)
    if where.uploaded_before is not None:
        conditions.append(images.c.upload_timestamp < where.uploaded_before)
    total = await connection.scalar(select(func.count()).select_from(images).where(*conditions))
    page = await connection.execute(
        select(*RECORD_COLUMNS)
        .where(*conditions)
        .order_by(images.c.upload_timestamp.desc(), images.c.id.desc())
        .offset(skip)
        .limit(limit)
    )
    return list(page), total or 0


async def delete_image(
    connection: AsyncConnection, image_id: uuid.UUID, *, store: ImageStore
) -> None:
    """Delete the row, commit, then remove the file unless the same bytes were re-uploaded."""
    async with transaction(connection):
        row = (
            await connection.execute(
                delete(images)
                .where(images.c.id == image_id)
                .returning(images.c.content_hash, images.c.file_path)
            )
        ).one_or_none()
    if row is None:
        raise ImageNotFound(image_id)
    content_hash, relative_path = row
    if relative_path is None:
        return
    # Under the hash's lock, so a concurrent upload of the same bytes cannot lose its file.
    async with transaction(connection):
        await lock_content_hash(connection, content_hash)
        reuploaded = await connection.scalar(
            select(exists().where(images.c.content_hash == content_hash))
        )
        if not reuploaded:
            await run_in_threadpool(store.remove, relative_path)
            await run_in_threadpool(store.remove_thumbnails, content_hash)


def cached_thumbnail(
    store: ImageStore, source: Path, content_hash: str, size: int, image_format: ThumbnailFormat
) -> Path:
    """The cached thumbnail's path, made first if needed. Synchronous: run it off the loop."""
    target = store.thumbnail_path(content_hash, size, image_format)
    if not target.is_file():
        store.write_file(target, render_thumbnail(source.read_bytes(), size, image_format))
    return target


def stale_rows(model: str, *, local_features: bool = False) -> ColumnElement[bool]:
    """Rows embedded with another model than `model` (or, with `local_features`, without the
    local features that near-duplicate verification needs)."""
    other_model = images.c.embedding_model != model
    return or_(other_model, images.c.local_features.is_(None)) if local_features else other_model


async def count_stale_embeddings(
    connection: AsyncConnection, *, model: str, local_features: bool = False
) -> int:
    """How many stored images `stale_rows` selects."""
    stale = (
        select(func.count())
        .select_from(images)
        .where(stale_rows(model, local_features=local_features))
    )
    return await connection.scalar(stale) or 0


async def count_by_model(connection: AsyncConnection) -> dict[str, int]:
    rows = await connection.execute(
        select(images.c.embedding_model, func.count()).group_by(images.c.embedding_model)
    )
    return {model: count for model, count in rows.tuples()}


async def count_images(connection: AsyncConnection) -> int:
    return await connection.scalar(select(func.count()).select_from(images)) or 0
