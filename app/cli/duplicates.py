"""`python -m app duplicates`: the duplicate groups of a running service (over HTTP), or, with
`--rebuild`, a rebuild of the groups in the service's database."""

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx

from app.cli import INTERRUPTED
from app.cli.client import RETRIES, RETRY_STATUSES, ServiceUnreachable, auth_headers

PAGE = 100  # the listing's largest page


def duplicates(arguments: argparse.Namespace) -> None:
    if arguments.rebuild:
        rebuild(arguments)
        return
    try:
        listing = asyncio.run(fetch_groups(arguments.url, api_key=arguments.api_key))
    except (ServiceUnreachable, ValueError, httpx.HTTPError) as exc:
        sys.exit(f"error: {exc}")
    if arguments.json:
        print(json.dumps(listing, indent=2))
        return
    print_table(listing)


async def fetch_groups(url: str, *, api_key: str | None) -> dict[str, Any]:
    """Every group of the service at `url`, largest first: `{total, rebuild_needed, groups}`.
    Raises ServiceUnreachable, or ValueError with the service's `detail` when it refuses."""
    groups: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=120, headers=auth_headers(api_key)
    ) as client:
        while True:
            page = await _get(client, url, {"skip": len(groups), "limit": PAGE})
            groups += page["items"]
            if not page["items"] or len(groups) >= page["total"]:
                return {
                    "total": len(groups),
                    "rebuild_needed": page["rebuild_needed"],
                    "groups": groups,
                }


async def _get(client: httpx.AsyncClient, url: str, params: dict[str, int]) -> dict[str, Any]:
    for attempt in range(RETRIES):
        try:
            response = await client.get("/api/v1/duplicates", params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServiceUnreachable(url) from exc
        if response.status_code in RETRY_STATUSES and attempt < RETRIES - 1:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        body: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise ValueError(body.get("detail", f"HTTP {response.status_code}"))
        return body
    raise AssertionError("unreachable")


def print_table(listing: dict[str, Any]) -> None:
    """One row per image, its group's rows together, the suggested keeper first (marked *).
    `best link`: the image's highest-scoring link in the group."""
    print(f"{'group':<36}  keep  {'image':<36}  {'pixels':>11}  {'bytes':>10}  best link  filename")
    images = 0
    for group in listing["groups"]:
        best: dict[str, float] = {}
        for link in group["links"]:
            for image_id in link["image_ids"]:
                best[image_id] = max(best.get(image_id, -1.0), link["similarity_score"])
        for member in group["members"]:
            images += 1
            pixels = f"{member['width']}x{member['height']}"
            print(
                f"{group['id']:<36}  {'*' if member['suggested_keeper'] else '':<4}  "
                f"{member['id']:<36}  {pixels:>11}  {member['file_size']:>10}  "
                f"{best.get(member['id'], 0.0):>9.3f}  {member['filename']}"
            )
    print(f"{listing['total']} duplicate group(s), {images} images; * the suggested keeper")
    if listing["rebuild_needed"]:
        print(
            "the groups are out of date (another model, threshold or verification, or a stopped "
            "rebuild): run `python -m app duplicates --rebuild`"
        )


def rebuild(arguments: argparse.Namespace) -> None:
    # Imported here: the listing above talks HTTP only and starts without them.
    import logging

    from app.cli.progress import Progress
    from app.core.config import get_settings
    from app.core.database import open_database
    from app.core.resources import SearchDefaults
    from app.errors import RebuildRunning
    from app.services.duplicates import (
        RebuildProgress,
        describe_settings,
        link_options,
        rebuild_groups,
    )

    settings = get_settings()
    logging.basicConfig(level=logging.WARNING)
    # Links come from the stored embeddings and local features: no model is run, only its name.
    options = link_options(SearchDefaults.from_settings(settings), settings.EMBEDDING_MODEL)
    progress = Progress("duplicates --rebuild", "image")
    done: RebuildProgress | None = None

    def on_progress(state: RebuildProgress) -> None:
        nonlocal done
        done = state
        progress.show(state.checked, state.total, 0)

    async def run() -> RebuildProgress:
        async with open_database(settings) as database:
            return await rebuild_groups(
                database.engine,
                options,
                batch_size=arguments.batch_size,
                concurrency=arguments.concurrency,
                on_progress=on_progress,
            )

    try:
        done = asyncio.run(run())
    except KeyboardInterrupt:
        progress.close()
        checked = 0 if done is None else done.checked
        print(
            f"duplicates: stopped by Ctrl-C after {checked} images; what was checked is kept, "
            "run it again to continue",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(INTERRUPTED)
    except RebuildRunning as exc:
        progress.close()
        sys.exit(f"error: {exc}")
    progress.close()
    continued = f", continuing a stopped rebuild ({done.already_checked} done before)"
    settings_used = describe_settings(
        options.model, options.near_duplicate_threshold, options.verification_candidates
    )
    print(
        f"duplicates: build {done.build} ({settings_used})"
        f"{continued if done.already_checked else ''}: "
        f"{done.checked} images checked, {done.links} links, {done.groups} group(s); "
        f"{done.skipped} skipped (embedded with another model: run reembed first); "
        f"{done.search_seconds + done.regroup_seconds:.1f} s (regrouping "
        f"{done.regroup_seconds:.1f} s)",
        file=sys.stderr,
    )
