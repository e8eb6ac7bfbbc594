"""Looking inside the image store: what the sweep would report, and the keys in a bucket."""

import obstore
from sqlalchemy import URL

from app.core.config import Settings
from app.core.database import create_engine
from app.core.resources import create_store
from app.core.storage import image_key_hash, thumbnail_key_hash
from app.services.consistency import MissingFile, check_storage
from bench.seaweedfs import S3Server
from tests.support.database import row_count


async def storage_state(settings: Settings, url: URL) -> tuple[int, list[str], list[MissingFile]]:
    """(rows, objects without rows, rows without objects), whatever their age."""
    engine = create_engine(url)
    try:
        store = await create_store(settings)
        async with engine.connect() as connection:
            rows = await row_count(connection)
            report = await check_storage(connection, store=store, repair=False, grace_seconds=-1)
    finally:
        await engine.dispose()
    return rows, report.orphan_files, report.missing_files


def bucket_keys(server: S3Server, prefix: str) -> list[str]:
    """Every key under the service's S3_PREFIX `prefix` (the readiness probe's aside)."""
    client = server.client(prefix)
    return sorted(
        meta["path"]
        for page in obstore.list(client, chunk_size=1000)
        for meta in page
        if not meta["path"].startswith(".probe/")
    )


def image_keys(keys: list[str]) -> list[str]:
    return [key for key in keys if image_key_hash(key) is not None]


def thumbnail_keys(keys: list[str]) -> list[str]:
    return [key for key in keys if thumbnail_key_hash(key) is not None]
