"""The sweep's comparison of rows and stored objects, page by page, on both stores."""

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import local_store, s3_store
from app.core.database import Database
from app.core.resources import create_store
from app.core.storage import ImageStore, image_key, thumbnail_key
from app.models.image import images
from app.services.consistency import SWEEP_LOCK, check_storage, remove_if_orphaned, sweep
from bench.corpus import synthetic_row
from tests.support.app import make_settings

HASHES = [f"{n:x}" * 64 for n in range(10)]  # in key order


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    overrides = request.getfixturevalue("s3_settings") if request.param == "s3" else {}
    return await create_store(make_settings(tmp_path, **overrides))


async def add_row(connection: AsyncConnection, content_hash: str) -> uuid.UUID:
    row = synthetic_row(np.ones(512, dtype=np.float32) / np.sqrt(512), model="perceptual")
    row["content_hash"], row["file_path"] = content_hash, image_key(content_hash, ".jpg")
    await connection.execute(insert(images).values(row))
    return row["id"]


async def keys(store: ImageStore) -> list[str]:
    return [
        info.key
        async for page in store.list_pages()
        for info in page
        if not info.key.startswith((".probe/", ".staging/"))
    ]


async def test_the_sweep_compares_page_by_page_and_removes_only_old_orphans(
    store: ImageStore, connection: AsyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (local_store, s3_store):
        monkeypatch.setattr(module, "LIST_PAGE_SIZE", 2)
    h = HASHES
    for n in (1, 2, 4, 5, 7):  # 1, 4, 7 get rows; 2 and 5 are orphans
        await store.put(image_key(h[n], ".jpg"), b"x", content_type="image/jpeg")
    for n in (1, 6):  # the thumbnail of 6 has no image row
        await store.put(thumbnail_key(h[n], 64, "jpeg"), b"t", content_type="image/jpeg")
    kept = {n: await add_row(connection, h[n]) for n in (1, 4, 7)}
    missing = {n: await add_row(connection, h[n]) for n in (0, 3, 9)}  # rows without objects
    # Store times have whole seconds: this one is younger than the grace period below.
    await asyncio.sleep(2.5)
    await store.put(image_key(h[8], ".jpg"), b"x", content_type="image/jpeg")

    report = await check_storage(connection, store=store, repair=False, grace_seconds=1.5)
    repaired = await check_storage(connection, store=store, repair=True, grace_seconds=1.5)

    assert report.orphan_files == [image_key(h[2], ".jpg"), image_key(h[5], ".jpg")]
    assert report.orphan_thumbnails == [thumbnail_key(h[6], 64, "jpeg")]
    assert sorted(row.id for row in report.missing_files) == sorted(missing.values())
    assert not {row.id for row in report.missing_files} & set(kept.values())
    assert repaired.removed == 3
    assert await keys(store) == sorted(
        [thumbnail_key(h[1], 64, "jpeg")] + [image_key(h[n], ".jpg") for n in (1, 4, 7, 8)]
    )


async def test_an_orphan_whose_row_appears_meanwhile_is_kept(
    store: ImageStore, connection: AsyncConnection
) -> None:
    key = image_key(HASHES[3], ".jpg")
    await store.put(key, b"x", content_type="image/jpeg")
    report = await check_storage(connection, store=store, repair=False, grace_seconds=-1)
    await add_row(connection, HASHES[3])  # an upload on another replica adopts the object

    assert report.orphan_files == [key]
    assert await remove_if_orphaned(connection, store, HASHES[3], key) is False
    assert await store.get(key) == b"x"


async def test_only_one_replica_sweeps_at_a_time(database: Database, tmp_path: Path) -> None:
    store = await create_store(make_settings(tmp_path))
    async with database.engine.connect() as other_replica:
        lock = await other_replica.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": SWEEP_LOCK}
        )
        assert lock is True
        try:
            skipped = await sweep(database.engine, store=store, grace_seconds=0)
        finally:
            await other_replica.execute(text("SELECT pg_advisory_unlock_all()"))
        swept = await sweep(database.engine, store=store, grace_seconds=0)

    assert skipped is None
    assert swept is not None
