"""The command line: `python -m app COMMAND`."""

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import httpx
import uvicorn
from uvicorn.supervisors import Multiprocess

from app.client import find_images, import_images, search_with_file
from app.core.config import get_settings
from app.core.database import create_sessionmaker, open_database, prepare_vector_index
from app.core.listener import spreads_connections, worker_socket
from app.core.observability import logging_config
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


DEFAULT_URL = "http://127.0.0.1:8000"


def serve(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    require_embedder_dependencies(settings.EMBEDDING_MODEL)
    if settings.WORKERS > 1 and settings.external_database_url() is None:
        # Each worker would start and stop the embedded server on its own.
        sys.exit(
            "error: WORKERS > 1 needs a PostgreSQL of its own (set DATABASE_URL); "
            "the embedded one serves a single worker"
        )
    level = "DEBUG" if settings.DEBUG else settings.LOG_LEVEL
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        # Python runs one thread at a time per process: worker processes let uploads (request
        # parsing, hashing, SQL, files) use every core, beside the decoding threads.
        workers=settings.WORKERS,
        log_level=level.lower(),
        # Applied in every worker process too; the service logs each request itself (with its
        # id), so uvicorn's access log is off.
        log_config=logging_config(level, settings.LOG_FORMAT),
        access_log=False,
        # Give in-flight requests time to finish on Ctrl-C / SIGTERM.
        timeout_graceful_shutdown=20,
    )
    if settings.WORKERS > 1:
        try:
            listener = (
                worker_socket(config.host, config.port)
                if spreads_connections()
                else config.bind_socket()
            )
        except OSError as exc:
            sys.exit(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror}")
        Multiprocess(config, sockets=[listener]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's exit status for a failed start-up


class ProgressBar:
    """A one-line progress report on stderr: count, rate and time left."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    def show(self, done: int, total: int, failed: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        filled = int((done / total if total else 1.0) * 30)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
            f"{done}/{total} {rate:.1f}/s ETA {left:.0f}s failed {failed}"
        )
        sys.stderr.flush()


def reembed(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    require_embedder_dependencies(settings.EMBEDDING_MODEL)
    logging.basicConfig(level=logging.WARNING)
    embedder = create_embedder(settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSION)

    bar = ProgressBar(f"reembed ({embedder.name})")

    async def run() -> ReembedProgress:
        async with open_database(settings) as engine:
            return await reembed_images(
                create_sessionmaker(engine),
                store=ImageStore(settings.image_dir),
                embedder=embedder,
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


def import_directory(arguments: argparse.Namespace) -> None:
    directory = Path(arguments.directory)
    if not directory.is_dir():
        sys.exit(f"error: {directory} is not a directory")
    images, skipped = find_images(directory, recursive=arguments.recursive)
    bar = ProgressBar("import")
    report = asyncio.run(
        import_images(
            images,
            url=arguments.url,
            concurrency=arguments.concurrency,
            on_progress=lambda r: bar.show(r.processed, r.total, len(r.rejected)),
        )
    )
    print(file=sys.stderr)
    print(
        f"import: {report.created} stored, {report.already_stored} already stored, "
        f"{len(report.rejected)} rejected, {len(skipped)} skipped (not images)"
    )
    for path, reason in report.rejected:
        print(f"rejected: {path}: {reason}")
    if report.rejected:
        sys.exit(1)


def search(arguments: argparse.Namespace) -> None:
    try:
        body = asyncio.run(
            search_with_file(Path(arguments.file), url=arguments.url, limit=arguments.limit)
        )
    except (OSError, ValueError, httpx.HTTPError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{'score':>7}  {'match':<15} {'id':<36}  filename")
    for match in body["similar_images"]:
        print(
            f"{match['similarity_score']:7.3f}  {match['match']:<15} {match['id']:<36}  "
            f"{match['filename']}"
        )
    print(f"{body['total_results']} similar image(s)")


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
    import_parser = commands.add_parser(
        "import", help="upload every image under DIRECTORY to a running service"
    )
    import_parser.add_argument("directory")
    import_parser.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    import_parser.add_argument("--concurrency", type=int, default=4, help="uploads at once")
    import_parser.add_argument("--recursive", action="store_true", help="include subfolders")
    import_parser.set_defaults(handler=import_directory)
    search_parser = commands.add_parser(
        "search", help="list the stored images most similar to FILE (FILE is not stored)"
    )
    search_parser.add_argument("file")
    search_parser.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    search_parser.add_argument("--limit", type=int, default=10, help="most results (1..100)")
    search_parser.set_defaults(handler=search)
    arguments = parser.parse_args(argv)
    arguments.handler(arguments)
