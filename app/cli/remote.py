"""Commands that talk to a running service over HTTP: import, search."""

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from app.cli import INTERRUPTED
from app.cli.client import (
    ImportReport,
    ServiceUnreachable,
    find_images,
    import_images,
    search_with_file,
)
from app.cli.progress import Progress


def import_directory(arguments: argparse.Namespace) -> None:
    directory = Path(arguments.directory)
    if not directory.is_dir():
        sys.exit(f"error: {directory} is not a directory")
    images, skipped = find_images(directory, recursive=arguments.recursive)
    report = ImportReport(total=len(images))
    progress = Progress("import", "image")
    try:
        asyncio.run(
            import_images(
                images,
                report,
                url=arguments.url,
                concurrency=arguments.concurrency,
                api_key=arguments.api_key,
                on_progress=lambda r: progress.show(r.processed, r.total, len(r.rejected)),
            )
        )
    except KeyboardInterrupt:
        progress.close()
        print(
            f"import: stopped by Ctrl-C after {report.processed} of {report.total} images",
            file=sys.stderr,
            flush=True,
        )
        _print_import_summary(report, skipped)
        sys.exit(INTERRUPTED)
    progress.close()
    if report.unreachable is not None:
        if report.processed:
            _print_import_summary(report, skipped)
        sys.exit(f"error: {report.unreachable}")
    _print_import_summary(report, skipped)
    if report.rejected:
        sys.exit(1)


def _print_import_summary(report: ImportReport, skipped: list[Path]) -> None:
    print(
        f"import: {report.created} stored, {report.already_stored} already stored, "
        f"{len(report.rejected)} rejected, {len(skipped)} skipped (not images)"
    )
    for path, reason in report.rejected:
        print(f"rejected: {path}: {reason}")
    for path in skipped:
        print(f"skipped: {path}")


def search(arguments: argparse.Namespace) -> None:
    if not Path(arguments.file).is_file():
        sys.exit(f"error: {arguments.file} is not a file")
    try:
        body = asyncio.run(
            search_with_file(
                Path(arguments.file),
                url=arguments.url,
                limit=arguments.limit,
                threshold=arguments.threshold,
                api_key=arguments.api_key,
            )
        )
    except (OSError, ValueError, ServiceUnreachable, httpx.HTTPError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{'score':>7}  {'match':<15} {'id':<36}  filename")
    for match in body["similar_images"]:
        print(
            f"{match['similarity_score']:7.3f}  {match['match']:<15} {match['id']:<36}  "
            f"{match['filename']}"
        )
    print(f"{body['total_results']} similar image(s)")
