"""How soon every endpoint answers when the database is stalled (its processes stopped).

    python -m bench.stall [--baseline PATH]

Serves the app as `make run` does (`python -m app serve`, embedded PostgreSQL), uploads a
picture, stops every PostgreSQL process (SIGSTOP), then times each endpoint: first one request
at a time, then all at once (three of each, so requests also queue for the pool), and lets the
server go on (SIGCONT). Printed: seconds to each answer and its status, the worst of each kind,
and the worst as a share of the target (503 within 5 s, readiness within 3 s). `--baseline`
runs the same against another checkout of the project (with its own .venv) in the same run,
e.g. a worktree of the commit before a change.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import ROOT, postgres_processes, running_app
from bench.upload import photo_jpeg

TARGET_SECONDS = 5.0
READINESS_TARGET_SECONDS = 3.0
READINESS = "GET /api/v1/health/ready"


def requests(image_id: str) -> list[tuple[str, str]]:
    image = f"/api/v1/images/{image_id}"
    return [
        ("GET", "/api/v1/health/ready"),
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/images/"),
        ("GET", image),
        ("GET", f"{image}/similar"),
        ("GET", f"{image}/file"),
        ("GET", f"{image}/thumbnail"),
        ("POST", "/api/v1/images/upload"),
        ("POST", "/api/v1/images/search"),
        ("DELETE", image),
    ]


async def timed(client: httpx.AsyncClient, method: str, path: str, picture: bytes) -> float:
    files = {"file": ("b.jpg", picture)} if method == "POST" else None
    started = time.perf_counter()
    response = await client.request(method, path, files=files)
    seconds = time.perf_counter() - started
    print(f"  {response.status_code} {seconds:5.2f} s  {method} {path}", flush=True)
    return seconds


async def measure(checkout: Path) -> dict[str, float]:
    """The worst seconds to an answer: readiness, every other endpoint one at a time, and all
    at once."""
    picture, other = photo_jpeg(640, 480), photo_jpeg(480, 640)
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as data_dir:
        environment = {"DATA_DIR": data_dir}
        async with (
            running_app(environment, checkout) as app,
            httpx.AsyncClient(base_url=app.url, timeout=60) as client,
        ):
            upload = await client.post("/api/v1/images/upload", files={"file": ("a.jpg", picture)})
            calls = requests(upload.json()["id"])
            await asyncio.gather(*(client.get("/api/v1/images/") for _ in range(6)))
            stalled = postgres_processes(Path(data_dir) / "postgres")
            for process in stalled:
                process.suspend()
            try:
                print(f"{checkout}: one at a time", flush=True)
                alone = {f"{m} {p}": await timed(client, m, p, other) for m, p in calls}
                print(f"{checkout}: all at once", flush=True)
                together = await asyncio.gather(*(timed(client, m, p, other) for m, p in calls * 3))
            finally:
                for process in stalled:
                    process.resume()
    readiness = alone.pop(READINESS)
    return {"readiness": readiness, "alone": max(alone.values()), "together": max(together)}


def report(name: str, worst: dict[str, float]) -> None:
    print(
        f"{name}: readiness {worst['readiness']:.2f} s "
        f"({worst['readiness'] / READINESS_TARGET_SECONDS:.2f} x target), "
        f"worst endpoint alone {worst['alone']:.2f} s, all at once {worst['together']:.2f} s "
        f"({max(worst['alone'], worst['together']) / TARGET_SECONDS:.2f} x target)",
        flush=True,
    )


async def run(baseline: Path | None) -> None:
    results = {"this checkout": await measure(ROOT)}
    if baseline is not None:
        results["baseline"] = await measure(baseline)
    for name, worst in results.items():
        report(name, worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.baseline))


if __name__ == "__main__":
    main()
