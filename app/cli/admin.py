"""Admin commands that work on the database directly: reembed, reindex, check."""

import argparse
import asyncio
import dataclasses
import logging
import sys
import time

from app.cli import INTERRUPTED
from app.cli.progress import Progress
from app.core.config import get_settings
from app.core.database import open_database, prepare_vector_index
from app.core.resources import create_store, open_resources
from app.core.vector_index import IndexStatus
from app.errors import StorageUnavailable
from app.services.consistency import StorageReport, check_storage
from app.services.reembed import ReembedProgress, reembed_images


def reembed(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.WARNING)
    progress = Progress(f"reembed ({settings.EMBEDDING_MODEL})", "image")
    # What the committed batches did: a batch cut short by Ctrl-C is rolled back.
    committed = ReembedProgress(total=0)

    def on_progress(batch_done: ReembedProgress) -> None:
        nonlocal committed
        committed = dataclasses.replace(batch_done)
        progress.show(batch_done.processed, batch_done.total, batch_done.failed)

    async def run() -> ReembedProgress:
        async with open_resources(settings) as resources:
            return await reembed_images(
                resources.engine,
                store=resources.store,
                embedder=resources.embedder,
                max_pixels=settings.MAX_IMAGE_PIXELS,
                batch_size=arguments.batch_size,
                on_progress=on_progress,
                local_features=settings.VERIFY_NEAR_DUPLICATES,
                regions=settings.regions,
            )

    try:
        done = asyncio.run(run())
    except KeyboardInterrupt:
        progress.close()
        print(
            "reembed: stopped by Ctrl-C; what was done is kept, run it again to continue",
            file=sys.stderr,
            flush=True,
        )
        _print_reembed_summary(committed, settings.EMBEDDING_MODEL)
        sys.exit(INTERRUPTED)
    progress.close()
    _print_reembed_summary(done, settings.EMBEDDING_MODEL)
    if done.failed:
        sys.exit(1)


def _print_reembed_summary(progress: ReembedProgress, model: str) -> None:
    print(
        f"reembed: {progress.updated} updated, {progress.failed} failed, model={model}",
        file=sys.stderr,
    )


def reindex(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    # The index build's own progress lines, not the embedded server's.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    logging.getLogger("app.core.embedded_postgres").setLevel(logging.WARNING)

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
    for missing in report.missing_files:
        print(f"row without a file: {missing.id} ({missing.filename})")
    print(f"check: {check_summary(report, repaired=arguments.repair)}")
    if report.missing_files or (not arguments.repair and not report.clean):
        sys.exit(1)


def check_summary(report: StorageReport, *, repaired: bool) -> str:
    """One line: how many of each kind were found, and what was done about them. Thumbnails
    without a row are named only when there are some: they are a cache, made again on demand."""
    removable = [
        _count(len(report.staging_leftovers), "staging leftover", "staging leftovers"),
        _count(len(report.orphan_files), "file without a row", "files without a row"),
    ]
    if report.orphan_thumbnails:
        removable.append(
            _count(
                len(report.orphan_thumbnails), "thumbnail without a row", "thumbnails without a row"
            )
        )
    missing = _count(len(report.missing_files), "row without a file", "rows without a file")
    found = report.staging_leftovers or report.orphan_files or report.orphan_thumbnails
    if repaired and found:
        return f"removed {', '.join(removable[:-1])} and {removable[-1]}; {missing}"
    summary = ", ".join([*removable, missing])
    if found:
        summary += " (`check --repair` removes the leftovers and the files without a row)"
    return summary


def _count(number: int, singular: str, plural: str) -> str:
    return (
        f"no {plural}" if number == 0 else f"1 {singular}" if number == 1 else f"{number} {plural}"
    )
