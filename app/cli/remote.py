"""Commands that talk to a running service over HTTP: import, search."""

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from app.cli.client import find_images, import_images, search_with_file
from app.cli.progress import ProgressBar


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
            api_key=arguments.api_key,
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
            search_with_file(
                Path(arguments.file),
                url=arguments.url,
                limit=arguments.limit,
                api_key=arguments.api_key,
            )
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
