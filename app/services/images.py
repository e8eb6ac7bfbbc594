"""Image records: read, list, delete, count; the stored file and its thumbnails."""

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Row, delete, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.database import transaction
from app.core.storage import (
    ByteRange,
    ImageStore,
    ObjectMissing,
    ObjectReader,
    thumbnail_key,
    thumbnail_prefix,
)
from app.errors import ImageFileMissing, ImageNotFound, StorageUnavailable
from app.imaging.thumbnail import MEDIA_TYPES, ThumbnailFormat, render_thumbnail
from app.models.image import RECORD_COLUMNS, image_regions, images

logger = logging.getLogger(__name__)

# One transaction-scoped advisory lock per content hash serialises the writers of one object
# (an upload, a delete and the sweep, on every replica: they share the database). Thumbnails
# are made under a lock per thumbnail key (another seed, so the two never collide).
_LOCK_KEY = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, :seed))")
_HASH_SEED, _THUMBNAIL_SEED = 0, 1


async def lock_content_hash(connection: AsyncConnection, content_hash: str) -> None:
    """Hold the hash's lock until the current transaction ends."""
    await connection.execute(_LOCK_KEY, {"key": content_hash, "seed": _HASH_SEED})


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


async def open_stored_file(
    image: Row[tuple[object, ...]], *, store: ImageStore, byte_range: ByteRange | None = None
) -> ObjectReader:
    """The image's file (or `byte_range` of it), opened for streaming (ImageFileMissing if it
    is gone)."""
    if image.file_path is None:
        raise ImageFileMissing(image.id)
    try:
        return await store.open(image.file_path, byte_range)
    except ObjectMissing as exc:
        raise ImageFileMissing(image.id) from exc


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
    """Delete the row, commit, then remove the object and its thumbnails unless the same bytes
    were uploaded again meanwhile. The row's commit is the delete: if the store cannot be
    reached afterwards, the object stays until the sweep removes it."""
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
            try:
                await remove_stored_objects(store, content_hash, relative_path)
            except StorageUnavailable:
                logger.warning("image %s deleted; its object is left to the sweep", image_id)


async def remove_stored_objects(store: ImageStore, content_hash: str, key: str) -> None:
    """Remove an image's object and its cached thumbnails (under the hash's lock)."""
    async for page in store.list_pages(thumbnail_prefix(content_hash)):
        for thumbnail in page:
            await store.delete(thumbnail.key)
    await store.delete(key)


async def cached_thumbnail(
    connection: AsyncConnection,
    image: Row[tuple[object, ...]],
    *,
    store: ImageStore,
    size: int,
    image_format: ThumbnailFormat,
    decode_slots: asyncio.Semaphore,
) -> bytes:
    """The thumbnail from the store's cache, made and cached first if needed: once per
    (image, size, format) across replicas, under a lock of that key held while it is made.

    Raises ImageFileMissing when the image's file is gone, InvalidImage when its bytes no
    longer decode, StorageUnavailable."""
    key = thumbnail_key(image.content_hash, size, image_format)
    try:
        return await store.get(key)
    except ObjectMissing:
        pass
    async with transaction(connection):
        await connection.execute(_LOCK_KEY, {"key": key, "seed": _THUMBNAIL_SEED})
        try:
            return await store.get(key)  # made by another request while this one waited
        except ObjectMissing:
            pass
        if image.file_path is None:
            raise ImageFileMissing(image.id)
        try:
            source = await store.get(image.file_path)
        except ObjectMissing as exc:
            raise ImageFileMissing(image.id) from exc
        async with decode_slots:
            thumbnail = await run_in_threadpool(render_thumbnail, source, size, image_format)
        await store.put(key, thumbnail, content_type=MEDIA_TYPES[image_format])
    return thumbnail


def stale_rows(
    model: str, *, local_features: bool = False, regions: bool = False
) -> ColumnElement[bool]:
    """Rows embedded with another model than `model` (or, with `local_features`, without the
    local features that near-duplicate verification needs; with `regions`, without region
    vectors of `model`)."""
    stale = [images.c.embedding_model != model]
    if local_features:
        stale.append(images.c.local_features.is_(None))
    if regions:
        stale.append(
            ~exists().where(
                image_regions.c.image_id == images.c.id, image_regions.c.embedding_model == model
            )
        )
    return or_(*stale)


async def count_stale_embeddings(
    connection: AsyncConnection, *, model: str, local_features: bool = False, regions: bool = False
) -> int:
    """How many stored images `stale_rows` selects."""
    stale = (
        select(func.count())
        .select_from(images)
        .where(stale_rows(model, local_features=local_features, regions=regions))
    )
    return await connection.scalar(stale) or 0


async def count_by_model(connection: AsyncConnection) -> dict[str, int]:
    rows = await connection.execute(
        select(images.c.embedding_model, func.count()).group_by(images.c.embedding_model)
    )
    return {model: count for model, count in rows.tuples()}


async def count_images(connection: AsyncConnection) -> int:
    return await connection.scalar(select(func.count()).select_from(images)) or 0
