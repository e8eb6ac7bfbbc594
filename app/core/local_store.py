"""Image files on the local disk, under one folder (STORAGE_DIR): the default store.

A write goes to a staging file (`.staging/`), is fsynced, then linked into its place with
`os.link`, which fails if the name exists: the file appears whole or not at all, and never
replaces another (create-only). The folder is fsynced after the link so that an acknowledged
file survives a crash. File work runs in worker threads, off the event loop.
"""

import errno
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool

from app.core.storage import (
    LIST_PAGE_SIZE,
    READ_CHUNK_SIZE,
    ByteRange,
    ObjectInfo,
    ObjectMissing,
    ObjectReader,
    StorageBackend,
)
from app.errors import StorageFull, StorageUnavailable

STAGING = ".staging"


class LocalImageStore:
    backend: StorageBackend = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / STAGING

    def prepare(self) -> None:
        """Create the folders (at start-up; raises OSError if that is impossible)."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    async def put(
        self, key: str, data: bytes, *, content_type: str, filename: str | None = None
    ) -> bool:
        # The file system keeps no content type or disposition: /file takes them from the row.
        try:
            return await run_in_threadpool(self._create, self.path(key), data)
        except OSError as exc:
            raise (StorageFull() if exc.errno == errno.ENOSPC else StorageUnavailable()) from exc

    def _create(self, target: Path, data: bytes) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging_name = tempfile.mkstemp(dir=self.staging_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as staging_file:
                staging_file.write(data)
                staging_file.flush()
                os.fsync(staging_file.fileno())
            try:
                os.link(staging_name, target)
            except FileExistsError:
                return False
        finally:
            Path(staging_name).unlink(missing_ok=True)
        # Makes the new name durable: without it a crash can forget a file already acknowledged.
        _fsync_directory(target.parent)
        return True

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await run_in_threadpool(path.read_bytes)
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc
        except OSError as exc:
            raise StorageUnavailable() from exc

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        path = self.path(key)
        try:
            file = await run_in_threadpool(path.open, "rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc
        except OSError as exc:
            raise StorageUnavailable() from exc
        size = os.fstat(file.fileno()).st_size
        start, end = byte_range or (0, size)
        end = min(end, size)
        file.seek(start)
        return ObjectReader(size=end - start, chunks=_read_chunks(file, end - start))

    async def delete(self, key: str) -> None:
        try:
            await run_in_threadpool(self.path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable() from exc

    async def list_pages(self, prefix: str = "") -> AsyncIterator[list[ObjectInfo]]:
        try:
            keys = await run_in_threadpool(self._list, prefix)
        except OSError as exc:
            raise StorageUnavailable() from exc
        for start in range(0, len(keys), LIST_PAGE_SIZE):
            yield keys[start : start + LIST_PAGE_SIZE]

    def _list(self, prefix: str) -> list[ObjectInfo]:
        top = self.path(prefix) if prefix else self.root
        if not top.is_dir():
            return []
        found = [
            ObjectInfo(
                path.relative_to(self.root).as_posix(),
                datetime.fromtimestamp(path.stat().st_mtime, UTC),
            )
            for path in _files(top)
        ]
        return sorted(found, key=lambda info: info.key)

    async def check(self) -> None:
        def usable() -> bool:
            return os.access(self.staging_dir, os.W_OK | os.X_OK) and os.access(
                self.root, os.W_OK | os.X_OK
            )

        if not await run_in_threadpool(usable):
            raise StorageUnavailable()

    async def signed_url(self, key: str, expires_in: timedelta) -> str:
        raise NotImplementedError("signed URLs need STORAGE_BACKEND=s3")


def _files(top: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(top):
        for name in names:
            yield Path(folder) / name


async def _read_chunks(file: BinaryIO, length: int) -> AsyncIterator[bytes]:
    try:
        while length > 0 and (
            chunk := await run_in_threadpool(file.read, min(READ_CHUNK_SIZE, length))
        ):
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
