"""A client of a running service, for the command line: bulk import and search by file."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.imaging.formats import SNIFF_BYTES, sniff_format

# Connection failures, as opposed to the service answering: nothing listens at the URL.
_NO_CONNECTION = (httpx.ConnectError, httpx.ConnectTimeout)


class ServiceUnreachable(Exception):
    """No connection to the service at `url` could be made: it is not running, or elsewhere."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"no service answers at {url}; start it with `make run` "
            "(or `python -m app serve`), or give its address with --url"
        )
        self.url = url


RETRIES = 5
# Answers that say "come back after Retry-After": a full upload queue or an unreachable
# database (503), a key's rate used up (429).
RETRY_STATUSES = frozenset({429, 503})


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class ImportReport:
    total: int
    created: int = 0
    already_stored: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    unreachable: ServiceUnreachable | None = None

    @property
    def processed(self) -> int:
        return self.created + self.already_stored + len(self.rejected)


def find_images(directory: Path, *, recursive: bool) -> tuple[list[Path], list[Path]]:
    """Files under `directory` that start like an image, and the others (skipped)."""
    candidates = sorted(directory.rglob("*") if recursive else directory.iterdir())
    images: list[Path] = []
    others: list[Path] = []
    for path in candidates:
        if not path.is_file():
            continue
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES)
        (images if sniff_format(head) else others).append(path)
    return images, others


async def _upload(client: httpx.AsyncClient, path: Path) -> tuple[int, dict[str, Any]]:
    data = await asyncio.to_thread(path.read_bytes)
    for attempt in range(RETRIES):
        response = await client.post("/api/v1/images/upload", files={"file": (path.name, data)})
        if response.status_code not in RETRY_STATUSES or attempt == RETRIES - 1:
            return response.status_code, response.json()
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    raise AssertionError("unreachable")


async def import_images(
    paths: list[Path],
    report: ImportReport,
    *,
    url: str,
    concurrency: int,
    api_key: str | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
) -> None:
    """Upload `paths`, `concurrency` at a time, counting outcomes in `report` as they come
    (so an interrupted run still has them). Bytes already stored are recognised by the
    service (200), so running an import again stores nothing twice. When no connection can be
    made, the import stops and `report.unreachable` says so."""
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and report.unreachable is None:
            path = queue.get_nowait()
            try:
                status, body = await _upload(client, path)
            except _NO_CONNECTION:
                report.unreachable = ServiceUnreachable(url)
                return
            except (httpx.HTTPError, ValueError) as exc:
                report.rejected.append((path, f"could not upload: {exc}"))
            else:
                if status == 201:
                    report.created += 1
                elif status == 200:
                    report.already_stored += 1
                else:
                    report.rejected.append((path, str(body.get("detail", f"HTTP {status}"))))
            if on_progress is not None:
                on_progress(report)

    async with httpx.AsyncClient(
        base_url=url, timeout=120, headers=auth_headers(api_key)
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))


async def search_with_file(
    path: Path, *, url: str, limit: int, threshold: float | None, api_key: str | None = None
) -> dict[str, Any]:
    """The service's answer to POST /api/v1/images/search with the file at `path`. Raises
    ServiceUnreachable, or ValueError with the service's `detail` when it refuses."""
    data = await asyncio.to_thread(path.read_bytes)
    form = {"limit": str(limit)} | ({} if threshold is None else {"threshold": str(threshold)})
    async with httpx.AsyncClient(
        base_url=url, timeout=120, headers=auth_headers(api_key)
    ) as client:
        try:
            response = await client.post(
                "/api/v1/images/search", files={"file": (path.name, data)}, data=form
            )
        except _NO_CONNECTION as exc:
            raise ServiceUnreachable(url) from exc
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise ValueError(body.get("detail", f"HTTP {response.status_code}"))
    return body
