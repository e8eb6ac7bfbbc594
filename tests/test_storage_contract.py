"""The storage contract (app/core/storage.py), the same tests against both stores: the local
folder and a real S3 server (SeaweedFS)."""

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import obstore
import pytest

from app.core import local_store, s3_store
from app.core.resources import create_store
from app.core.storage import (
    ImageStore,
    ObjectMissing,
    content_disposition,
    image_key,
    image_key_hash,
    thumbnail_key,
    thumbnail_key_hash,
    thumbnail_prefix,
)
from app.errors import StorageUnavailable
from bench.seaweedfs import S3Server
from tests.support.app import make_settings

HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    overrides = request.getfixturevalue("s3_settings") if request.param == "s3" else {}
    return await create_store(make_settings(tmp_path, **overrides))


@pytest.fixture(params=["local", "s3"])
async def unreachable_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """A local folder replaced by a plain file; an S3 endpoint where nothing listens."""
    if request.param == "s3":
        settings = make_settings(
            tmp_path,
            STORAGE_BACKEND="s3",
            S3_BUCKET="images",
            S3_ENDPOINT_URL="http://127.0.0.1:9",
            S3_MAX_RETRIES=0,
        )
        return await create_store(settings)
    settings = make_settings(tmp_path)
    store = await create_store(settings)
    for path in sorted(settings.image_dir.rglob("*"), reverse=True):
        path.rmdir()
    settings.image_dir.rmdir()
    settings.image_dir.write_bytes(b"")
    return store


async def test_put_creates_an_object_once_and_never_overwrites_it(store: ImageStore) -> None:
    key = image_key(HASH_A, ".jpg")

    assert await store.put(key, b"first", content_type="image/jpeg") is True
    assert await store.put(key, b"second", content_type="image/jpeg") is False

    assert await store.get(key) == b"first"


async def test_concurrent_writers_of_one_key_have_exactly_one_winner(store: ImageStore) -> None:
    key = image_key(HASH_B, ".png")
    bodies = [f"writer {n}".encode() * 1000 for n in range(8)]

    created = await asyncio.gather(
        *(store.put(key, body, content_type="image/png") for body in bodies)
    )

    assert created.count(True) == 1
    assert await store.get(key) == bodies[created.index(True)]


async def test_open_streams_the_whole_object_with_its_size(store: ImageStore) -> None:
    key = image_key(HASH_A, ".png")
    data = os.urandom(700_000)  # several read chunks
    await store.put(key, data, content_type="image/png")

    reader = await store.open(key)
    chunks = [chunk async for chunk in reader.chunks]

    assert reader.size == len(data)
    assert len(chunks) > 1
    assert b"".join(chunks) == data


async def test_reading_a_missing_key_raises_object_missing(store: ImageStore) -> None:
    key = image_key(HASH_B, ".jpg")
    with pytest.raises(ObjectMissing):
        await store.get(key)
    with pytest.raises(ObjectMissing):
        await store.open(key)


async def test_delete_removes_the_object_and_is_idempotent(store: ImageStore) -> None:
    key = image_key(HASH_A, ".jpg")
    await store.put(key, b"x", content_type="image/jpeg")

    await store.delete(key)
    await store.delete(key)

    with pytest.raises(ObjectMissing):
        await store.get(key)
    assert await store.put(key, b"again", content_type="image/jpeg") is True


async def test_listing_is_sorted_paged_and_dated(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (local_store, s3_store):
        monkeypatch.setattr(module, "LIST_PAGE_SIZE", 3)
    keys = [image_key(f"{n:x}" * 64, ".jpg") for n in range(7)]
    keys.append(thumbnail_key(HASH_A, 64, "jpeg"))
    before = datetime.now(UTC) - timedelta(minutes=5)
    for key in reversed(keys):
        await store.put(key, b"x", content_type="image/jpeg")

    pages = [page async for page in store.list_pages()]
    listed = [info.key for page in pages for info in page if not info.key.startswith(".probe/")]

    assert listed == sorted(keys)
    assert [len(page) for page in pages][:2] == [3, 3]
    assert all(before < info.modified <= datetime.now(UTC) for page in pages for info in page)


async def test_listing_a_prefix_lists_that_folder_only(store: ImageStore) -> None:
    wanted = [thumbnail_key(HASH_A, size, "jpeg") for size in (64, 128)]
    for key in [*wanted, thumbnail_key(HASH_B, 64, "jpeg"), image_key(HASH_A, ".jpg")]:
        await store.put(key, b"x", content_type="image/jpeg")

    listed = [
        info.key async for page in store.list_pages(thumbnail_prefix(HASH_A)) for info in page
    ]

    assert listed == sorted(wanted)


async def test_check_passes_on_a_usable_store(store: ImageStore) -> None:
    await store.check()


async def test_an_unreachable_store_raises_storage_unavailable(
    unreachable_store: ImageStore,
) -> None:
    key = image_key(HASH_A, ".jpg")
    with pytest.raises(StorageUnavailable):
        await unreachable_store.check()
    with pytest.raises(StorageUnavailable):
        await unreachable_store.put(key, b"x", content_type="image/jpeg")


async def test_s3_objects_carry_their_content_type_and_disposition(
    s3_server: S3Server, s3_settings: dict[str, str], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **s3_settings)
    key = image_key(HASH_A, ".jpg")
    store = await create_store(settings)
    await store.put(key, b"jpeg bytes", content_type="image/jpeg", filename="Zoë 1.jpg")
    url = await store.signed_url(key, timedelta(seconds=60))

    stored = await obstore.get_async(s3_server.client(settings.S3_PREFIX), key)
    async with httpx.AsyncClient() as client:
        signed = await client.get(url)
        tampered = await client.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))

    assert stored.attributes == {
        "Content-Type": "image/jpeg",
        "Content-Disposition": "inline; filename*=utf-8''Zo%C3%AB%201.jpg",
    }
    assert (signed.status_code, signed.content) == (200, b"jpeg bytes")
    assert signed.headers["content-type"] == "image/jpeg"
    assert signed.headers["content-disposition"] == stored.attributes["Content-Disposition"]
    assert tampered.status_code == 403


def test_keys_name_the_content_hash_and_nothing_else() -> None:
    assert image_key(HASH_A, ".jpg") == f"aa/aa/{HASH_A}.jpg"
    assert image_key_hash(image_key(HASH_A, ".jpg")) == HASH_A
    assert thumbnail_key_hash(thumbnail_key(HASH_B, 256, "webp")) == HASH_B
    for other in ("../etc/passwd", f".thumbnails/{HASH_A}/x", f"aa/aa/{HASH_A}", ".probe/ready"):
        assert image_key_hash(other) is None
        assert thumbnail_key_hash(other) is None


def test_content_disposition_is_plain_for_plain_names_and_encoded_otherwise() -> None:
    assert content_disposition("photo.jpg") == 'inline; filename="photo.jpg"'
    assert content_disposition('a"b.jpg') == "inline; filename*=utf-8''a%22b.jpg"


async def test_open_reads_a_byte_range(store: ImageStore) -> None:
    key = image_key(HASH_B, ".png")
    data = os.urandom(600_000)
    await store.put(key, data, content_type="image/png")

    middle = await store.open(key, (1000, 300_000))
    tail = await store.open(key, (599_990, 600_000))

    assert middle.size == 299_000
    assert b"".join([chunk async for chunk in middle.chunks]) == data[1000:300_000]
    assert (tail.size, b"".join([chunk async for chunk in tail.chunks])) == (10, data[-10:])
