"""Where image files and cached thumbnails live: one interface, two implementations.

`LocalImageStore` (app/core/local_store.py) keeps them under STORAGE_DIR; `S3ImageStore`
(app/core/s3_store.py) in an S3-compatible bucket that every replica shares. Both follow the
same contract (tests/test_storage_contract.py runs the same tests against both):

- Keys are content-addressed: `ab/cd/<sha256><ext>` for an image (the row's `file_path`),
  `.thumbnails/<sha256>/<size>.<format>` for a cached thumbnail. The client's filename never
  reaches a key.
- Writes are create-only: `put` never replaces an object, and its own answer says whether it
  wrote (True) or found an object already there (False). Since the key is the bytes' SHA-256, an
  object already there holds the same bytes. No existence check before or after a write.
- An object exists whole or not at all.
- `delete` is idempotent; `list_pages` yields every key under a prefix in byte order, a page
  at a time, with its modification time.
- A store that cannot be reached raises `StorageUnavailable` (503), a full disk `StorageFull`
  (507), a missing object `ObjectMissing`.
"""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol
from urllib.parse import quote

StorageBackend = Literal["local", "s3"]

THUMBNAIL_PREFIX = ".thumbnails"
LIST_PAGE_SIZE = 1000  # keys per page of a listing (S3's own page size)
READ_CHUNK_SIZE = 256 * 1024  # bytes per chunk of a streamed read

_IMAGE_KEY = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/(?P<hash>[0-9a-f]{64})\.[a-z0-9]{1,8}$")
_THUMBNAIL_KEY = re.compile(rf"^\{THUMBNAIL_PREFIX}/(?P<hash>[0-9a-f]{{64}})/\d+\.[a-z]+$")


class ObjectMissing(Exception):
    """No object has this key."""


def image_key(content_hash: str, extension: str) -> str:
    return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}{extension}"


def thumbnail_prefix(content_hash: str) -> str:
    return f"{THUMBNAIL_PREFIX}/{content_hash}"


def thumbnail_key(content_hash: str, size: int, image_format: str) -> str:
    return f"{thumbnail_prefix(content_hash)}/{size}.{image_format}"


def image_key_hash(key: str) -> str | None:
    """The content hash an image key names, or None for any other key."""
    match = _IMAGE_KEY.match(key)
    return match["hash"] if match else None


def thumbnail_key_hash(key: str) -> str | None:
    """The content hash of the image a thumbnail key belongs to, or None for any other key."""
    match = _THUMBNAIL_KEY.match(key)
    return match["hash"] if match else None


def content_disposition(filename: str, disposition: str = "inline") -> str:
    """A Content-Disposition value for `filename` (RFC 6266), as Starlette writes it: plain
    when percent-encoding leaves the name as it is, else percent-encoded UTF-8 (`filename*`)."""
    encoded = quote(filename, safe="")
    if encoded == filename:
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{encoded}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    modified: datetime  # aware, UTC


ByteRange = tuple[int, int]  # (start, end), end exclusive, within the object


@dataclass
class ObjectReader:
    """An object (or a range of it) opened for reading: how many bytes, and the bytes, chunk
    by chunk."""

    size: int
    chunks: AsyncIterator[bytes]


class ImageStore(Protocol):
    """The storage contract (module docstring). Every method is a coroutine: the S3 client is
    asynchronous, and the local store runs its file work in worker threads."""

    backend: StorageBackend

    async def put(
        self, key: str, data: bytes, *, content_type: str, filename: str | None = None
    ) -> bool:
        """Create the object `key`; True if written, False if one was already there (left
        as it is). `content_type` and `filename` (as an inline Content-Disposition) are
        stored on the object where the store keeps such attributes (S3)."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole object (ObjectMissing if there is none)."""
        ...

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        """The object, or `byte_range` of it, to be streamed (ObjectMissing if there is
        none)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; nothing happens if there is none."""
        ...

    def list_pages(self, prefix: str = "") -> AsyncIterator[list[ObjectInfo]]:
        """Every object under `prefix` (a folder: whole path segments), sorted by key, in pages
        of at most LIST_PAGE_SIZE."""
        ...

    async def check(self) -> None:
        """One cheap request that shows the store can be used; StorageUnavailable if not."""
        ...

    async def signed_url(self, key: str, expires_in: timedelta) -> str:
        """A URL that lets its holder GET the object until it expires (S3 only)."""
        ...
