"""Rows and files kept in step: the start-up sweep and `python -m app check [--repair]`.

Files younger than `min_age_seconds` are left alone: they may belong to an upload in flight
(its file is in place a few milliseconds before its row is committed).
"""

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool

from app.core.storage import ImageStore
from app.models.image import images

DEFAULT_MIN_AGE_SECONDS = 60.0


class MissingFile(NamedTuple):
    """A row whose file is gone: its id and the filename it was uploaded as."""

    id: uuid.UUID
    filename: str


@dataclass
class StorageReport:
    staging_leftovers: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    missing_files: list[MissingFile] = field(default_factory=list)
    removed: int = 0

    @property
    def clean(self) -> bool:
        return not (self.staging_leftovers or self.orphan_files or self.missing_files)


async def check_storage(
    connection: AsyncConnection,
    *,
    store: ImageStore,
    repair: bool,
    min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS,
) -> StorageReport:
    query = select(images.c.id, images.c.file_path, images.c.filename).order_by(images.c.id)
    rows = (await connection.execute(query)).tuples().all()
    files = await run_in_threadpool(store.stored_files)
    staging = await run_in_threadpool(store.staging_files)
    cutoff = time.time() - min_age_seconds
    known = {path for _, path, _ in rows if path is not None}

    report = StorageReport(
        staging_leftovers=sorted(
            str(path.name) for path, mtime in staging.items() if mtime < cutoff
        ),
        orphan_files=sorted(
            path for path, mtime in files.items() if path not in known and mtime < cutoff
        ),
        missing_files=[
            MissingFile(image_id, filename)
            for image_id, path, filename in rows
            if path is None or path not in files
        ],
    )
    if repair:
        doomed = [store.staging_dir / name for name in report.staging_leftovers] + [
            store.absolute_path(path) for path in report.orphan_files
        ]
        report.removed = await run_in_threadpool(_remove_all, doomed)
    return report


def _remove_all(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
