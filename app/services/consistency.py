"""Rows and stored objects kept in step: the sweep (at start-up and every
STORAGE_SWEEP_INTERVAL_SECONDS in the service) and `python -m app check [--repair]`.

The store is listed a page at a time, in key order; since an image's key begins with its
content hash, each page of image keys covers a range of hashes, and the rows of that range are
read with one statement. Memory stays bounded by the page size whatever the bucket holds.

Objects younger than the grace period are never touched: another replica may be between
writing one and committing its row. An orphan is removed only under its hash's lock, after
checking again that no row names it, so an upload that adopts an old object (or a delete) on
another replica cannot lose its object to the sweep.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import exists, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.database import transaction
from app.core.local_store import STAGING
from app.core.storage import (
    LIST_PAGE_SIZE,
    ImageStore,
    ObjectInfo,
    image_key_hash,
    thumbnail_key_hash,
)
from app.models.image import images
from app.services.images import lock_content_hash, remove_stored_objects

logger = logging.getLogger(__name__)

# One sweep at a time across replicas: a session-level advisory lock (an arbitrary constant).
SWEEP_LOCK = 0x1A6E5EE9


class MissingFile(NamedTuple):
    """A row whose file is gone: its id and the filename it was uploaded as."""

    id: uuid.UUID
    filename: str


@dataclass
class StorageReport:
    staging_leftovers: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)  # image objects without a row
    orphan_thumbnails: list[str] = field(default_factory=list)
    missing_files: list[MissingFile] = field(default_factory=list)  # rows without an object
    removed: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.staging_leftovers
            or self.orphan_files
            or self.orphan_thumbnails
            or self.missing_files
        )


async def check_storage(
    connection: AsyncConnection,
    *,
    store: ImageStore,
    repair: bool,
    grace_seconds: float,
) -> StorageReport:
    """Compare the store with the rows; with `repair`, remove leftovers and orphans older
    than `grace_seconds`. Rows without an object are reported, never deleted."""
    report = StorageReport()
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    covered = ""  # every hash up to this one has been compared
    async for page in store.list_pages():
        page_images: dict[str, ObjectInfo] = {}
        page_thumbnails: list[tuple[str, ObjectInfo]] = []
        for info in page:
            if (content_hash := image_key_hash(info.key)) is not None:
                page_images[content_hash] = info
            elif (content_hash := thumbnail_key_hash(info.key)) is not None:
                page_thumbnails.append((content_hash, info))
            elif info.key.startswith(f"{STAGING}/") and info.modified < cutoff:
                report.staging_leftovers.append(info.key.removeprefix(f"{STAGING}/"))
                if repair:
                    await store.delete(info.key)
                    report.removed += 1
        if page_images:
            last = max(page_images)
            await _compare_images(
                connection, store, page_images, (covered, last), cutoff, repair, report
            )
            covered = last
        if page_thumbnails:
            await _compare_thumbnails(connection, store, page_thumbnails, cutoff, repair, report)
    # The rows after the last listed hash have no object; read them a page at a time.
    while True:
        rows = (
            await connection.execute(
                select(images.c.id, images.c.content_hash, images.c.filename)
                .where(images.c.content_hash > covered)
                .order_by(images.c.content_hash)
                .limit(LIST_PAGE_SIZE)
            )
        ).all()
        report.missing_files.extend(MissingFile(row.id, row.filename) for row in rows)
        if len(rows) < LIST_PAGE_SIZE:
            return report
        covered = rows[-1].content_hash


async def _compare_images(
    connection: AsyncConnection,
    store: ImageStore,
    objects: dict[str, ObjectInfo],
    hashes: tuple[str, str],
    cutoff: datetime,
    repair: bool,
    report: StorageReport,
) -> None:
    known = await _report_rows_without_objects(connection, objects, hashes, report)
    for content_hash, info in sorted(objects.items()):
        if content_hash in known or info.modified >= cutoff:
            continue
        report.orphan_files.append(info.key)
        if repair and await remove_if_orphaned(connection, store, content_hash, info.key):
            report.removed += 1


async def _report_rows_without_objects(
    connection: AsyncConnection,
    objects: dict[str, ObjectInfo],
    hashes: tuple[str, str | None],
    report: StorageReport,
) -> set[str]:
    """Report the rows whose hash lies in (after, up to] and whose object is not among
    `objects`; returns the hashes of every row in that range."""
    after, up_to = hashes
    query = select(images.c.id, images.c.content_hash, images.c.file_path, images.c.filename).where(
        images.c.content_hash > after
    )
    if up_to is not None:
        query = query.where(images.c.content_hash <= up_to)
    known: set[str] = set()
    for image_id, content_hash, file_path, filename in await connection.execute(query):
        known.add(content_hash)
        listed = objects.get(content_hash)
        if file_path is None or listed is None or listed.key != file_path:
            report.missing_files.append(MissingFile(image_id, filename))
    return known


async def _compare_thumbnails(
    connection: AsyncConnection,
    store: ImageStore,
    thumbnails: list[tuple[str, ObjectInfo]],
    cutoff: datetime,
    repair: bool,
    report: StorageReport,
) -> None:
    hashes = {content_hash for content_hash, _ in thumbnails}
    known = set(
        await connection.scalars(
            select(images.c.content_hash).where(images.c.content_hash.in_(hashes))
        )
    )
    for content_hash, info in thumbnails:
        if content_hash in known or info.modified >= cutoff:
            continue
        report.orphan_thumbnails.append(info.key)
        if repair and await remove_if_orphaned(connection, store, content_hash, info.key):
            report.removed += 1


async def remove_if_orphaned(
    connection: AsyncConnection, store: ImageStore, content_hash: str, key: str
) -> bool:
    """Remove `key` if, under the hash's lock, still no row has this hash."""
    async with transaction(connection):
        await lock_content_hash(connection, content_hash)
        if await connection.scalar(select(exists().where(images.c.content_hash == content_hash))):
            return False
        if image_key_hash(key) is not None:
            await remove_stored_objects(store, content_hash, key)
        else:
            await store.delete(key)
    return True


async def sweep(
    engine: AsyncEngine, *, store: ImageStore, grace_seconds: float
) -> StorageReport | None:
    """One repairing sweep, unless another replica is sweeping (then None). It holds one
    pooled connection meanwhile, the one that holds the lock."""
    async with engine.connect() as connection:
        locked = await connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": SWEEP_LOCK}
        )
        if not locked:
            return None
        try:
            report = await check_storage(
                connection, store=store, repair=True, grace_seconds=grace_seconds
            )
        except BaseException:
            # Closed rather than pooled: a session lock left on it would block later sweeps.
            await connection.invalidate()
            raise
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SWEEP_LOCK})
    if not report.clean:
        logger.warning(
            "storage sweep: removed %d leftovers and objects without rows; "
            "%d images have no object (see `python -m app check`)",
            report.removed,
            len(report.missing_files),
        )
    return report
