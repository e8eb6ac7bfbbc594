"""Admin commands that work on the database directly: reembed, reindex, check."""

import argparse
import asyncio
import logging
import sys
import time

from app.cli.progress import ProgressBar
from app.core.config import get_settings
from app.core.database import open_database, prepare_vector_index
from app.core.resources import create_embedder, create_store, open_resources
from app.core.vector_index import IndexStatus
from app.errors import StorageUnavailable
from app.imaging.cnn import CnnUnavailable, check_available
from app.services.consistency import StorageReport, check_storage
from app.services.reembed import ReembedProgress, reembed_images


def require_embedder_dependencies(model: str) -> None:
    """Refuse to start, with the fix, when the chosen embedder's extra is not installed."""
    if model == "cnn":
        try:
            check_available()
        except CnnUnavailable as exc:
            sys.exit(f"error: {exc}")


def reembed(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    require_embedder_dependencies(settings.EMBEDDING_MODEL)
    logging.basicConfig(level=logging.WARNING)
    embedder = create_embedder(settings)
    bar = ProgressBar(f"reembed ({embedder.name})")

    async def run() -> ReembedProgress:
        async with open_resources(settings) as resources:
            return await reembed_images(
                resources.engine,
                store=resources.store,
                embedder=resources.embedder,
                max_pixels=settings.MAX_IMAGE_PIXELS,
                batch_size=arguments.batch_size,
                on_progress=lambda p: bar.show(p.processed, p.total, p.failed),
            )

    progress = asyncio.run(run())
    print(
        f"\nreembed: {progress.updated} updated, {progress.failed} failed, model={embedder.name}",
        file=sys.stderr,
    )
    if progress.failed:
        sys.exit(1)


def reindex(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def run() -> IndexStatus:
        async with open_database(settings, prepare_index=False) as database:
            return await prepare_vector_index(database.url, settings, rebuild=True)

    started = time.monotonic()
    status = asyncio.run(run())
    print(
        f"reindex: {status.action} {status.definition or ''} in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )


def check(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.WARNING)

    async def run() -> StorageReport:
        store = await create_store(settings)
        async with (
            open_database(settings, prepare_index=False) as database,
            database.engine.connect() as connection,
        ):
            return await check_storage(
                connection,
                store=store,
                repair=arguments.repair,
                grace_seconds=settings.STORAGE_GRACE_SECONDS
                if arguments.min_age is None
                else arguments.min_age,
            )

    try:
        report = asyncio.run(run())
    except StorageUnavailable:
        sys.exit(f"error: the {settings.STORAGE_BACKEND} image store cannot be reached")
    for name in report.staging_leftovers:
        print(f"staging leftover: {name}")
    for key in report.orphan_files:
        print(f"file without a row: {key}")
    for key in report.orphan_thumbnails:
        print(f"thumbnail without a row: {key}")
    for image_id in report.missing_files:
        print(f"row without a file: {image_id}")
    verb = "removed" if arguments.repair else "would remove (use --repair)"
    print(
        f"check: {len(report.staging_leftovers)} staging leftovers, {len(report.orphan_files)} "
        f"files and {len(report.orphan_thumbnails)} thumbnails without rows ({verb}), "
        f"{len(report.missing_files)} rows without files"
        + (f"; {report.removed} files removed" if arguments.repair else "")
    )
    if report.missing_files or (not arguments.repair and not report.clean):
        sys.exit(1)
