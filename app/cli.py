"""The command line: `python -m app COMMAND`."""

import argparse
import asyncio
import logging
import sys
import time

import uvicorn

from app.core.config import get_settings
from app.core.database import create_sessionmaker, open_database, prepare_vector_index
from app.core.observability import configure_logging
from app.core.vector_index import IndexStatus
from app.services.cnn_embedder import CnnUnavailable, check_available
from app.services.consistency import DEFAULT_MIN_AGE_SECONDS, StorageReport, check_storage
from app.services.embeddings import create_embedder
from app.services.reembed import ReembedProgress, reembed_images
from app.services.storage import ImageStore


def require_embedder_dependencies(model: str) -> None:
    """Refuse to start, with the fix, when the chosen embedder's extra is not installed."""
    if model == "cnn":
        try:
            check_available()
        except CnnUnavailable as exc:
            sys.exit(f"error: {exc}")


def serve(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    require_embedder_dependencies(settings.EMBEDDING_MODEL)
    level = "DEBUG" if settings.DEBUG else settings.LOG_LEVEL
    configure_logging(level, settings.LOG_FORMAT)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        log_level=level.lower(),
        # The service logs each request itself (with its id); uvicorn keeps to its own news.
        log_config=None,
        access_log=False,
        # Give in-flight requests time to finish on Ctrl-C / SIGTERM.
        timeout_graceful_shutdown=20,
    )


class ProgressBar:
    """A one-line progress report on stderr: count, rate and time left."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    def __call__(self, progress: ReembedProgress) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = progress.processed / elapsed
        left = (progress.total - progress.processed) / rate if rate > 0 else 0.0
        share = progress.processed / progress.total if progress.total else 1.0
        filled = int(share * 30)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
            f"{progress.processed}/{progress.total} {rate:.1f}/s ETA {left:.0f}s "
            f"failed {progress.failed}"
        )
        sys.stderr.flush()


def reembed(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    require_embedder_dependencies(settings.EMBEDDING_MODEL)
    logging.basicConfig(level=logging.WARNING)
    embedder = create_embedder(settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSION)

    async def run() -> ReembedProgress:
        async with open_database(settings) as engine:
            return await reembed_images(
                create_sessionmaker(engine),
                store=ImageStore(settings.image_dir),
                embedder=embedder,
                max_pixels=settings.MAX_IMAGE_PIXELS,
                batch_size=arguments.batch_size,
                on_progress=ProgressBar(f"reembed ({embedder.name})"),
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
        async with open_database(settings, prepare_index=False) as engine:
            return await prepare_vector_index(engine.url, settings, rebuild=True)

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
        async with (
            open_database(settings, prepare_index=False) as engine,
            create_sessionmaker(engine)() as session,
        ):
            return await check_storage(
                session,
                store=ImageStore(settings.image_dir),
                repair=arguments.repair,
                min_age_seconds=arguments.min_age,
            )

    report = asyncio.run(run())
    for name in report.staging_leftovers:
        print(f"staging leftover: {name}")
    for path in report.orphan_files:
        print(f"file without a row: {path}")
    for image_id in report.missing_files:
        print(f"row without a file: {image_id}")
    verb = "removed" if arguments.repair else "would remove (use --repair)"
    print(
        f"check: {len(report.staging_leftovers)} staging leftovers, {len(report.orphan_files)} "
        f"files without rows ({verb}), {len(report.missing_files)} rows without files"
        + (f"; {report.removed} files removed" if arguments.repair else "")
    )
    if report.missing_files or (not arguments.repair and not report.clean):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the API on HOST:PORT (starts the embedded PostgreSQL if DATABASE_URL is unset)",
    ).set_defaults(handler=serve)
    reembed_parser = commands.add_parser(
        "reembed",
        help="recompute the embeddings of stored images made with another EMBEDDING_MODEL",
    )
    reembed_parser.add_argument("--batch-size", type=int, default=100, help="rows per commit")
    reembed_parser.set_defaults(handler=reembed)
    check_parser = commands.add_parser(
        "check", help="compare stored files with rows; --repair removes files without rows"
    )
    check_parser.add_argument("--repair", action="store_true", help="remove orphan files")
    check_parser.add_argument(
        "--min-age",
        type=float,
        default=DEFAULT_MIN_AGE_SECONDS,
        help="leave files younger than this many seconds (uploads in flight)",
    )
    check_parser.set_defaults(handler=check)
    commands.add_parser(
        "reindex",
        help="rebuild the vector index per VECTOR_INDEX (IVFFlat: after the collection has grown)",
    ).set_defaults(handler=reindex)
    arguments = parser.parse_args(argv)
    arguments.handler(arguments)
