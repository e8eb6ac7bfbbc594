"""Upload throughput over HTTP against the same image work done in-process, and how responsive
the service stays meanwhile.

For 1-megapixel and 12-megapixel JPEGs, at concurrency 1, 4 and 8:
- HTTP: POST /api/v1/images/upload to the app running in `WORKERS` processes of its own
  (default: one per core, at most 8); every upload a distinct file, so each one is decoded,
  embedded, written, fsynced and inserted;
- in-process: the same validate + decode + embed work (`analyse_image`) on as many threads;
- the p99 latency of GET /api/v1/health/live, polled while the HTTP uploads run.

    .venv/bin/python -m bench.upload                # a server process per core
    WORKERS=1 .venv/bin/python -m bench.upload      # one server process
    .venv/bin/python -m bench.upload --baseline ../earlier-checkout   # A/B, same run
    EMBEDDING_MODEL=perceptual VERIFY_NEAR_DUPLICATES=false .venv/bin/python -m bench.upload \
        --baseline ../checkout-before-cnn    # settings reach both apps and the in-process work
    STORAGE_BACKEND=s3 .venv/bin/python -m bench.upload   # images in a SeaweedFS of its own

bench/storage.py compares the two stores side by side.
"""

import argparse
import asyncio
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from app.core.config import Settings
from app.core.resources import UploadPolicy, create_embedder
from app.imaging.analysis import analyse_image
from bench.harness import (
    ROOT,
    KeepAliveClient,
    RunningApp,
    fresh_database,
    latencies,
    percentile,
    postgres_server,
    running_app,
)
from bench.seaweedfs import storage_environment

SIZES = {"1MP": (1155, 866), "12MP": (4000, 3000)}
UPLOADS = {"1MP": 160, "12MP": 32}
CONCURRENCY = (1, 4, 8)
BOUNDARY = "benchboundary"


def photo_jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(height // 32, width // 32, 3), dtype=np.uint8)
    picture = Image.fromarray(noise).resize((width, height)).filter(ImageFilter.GaussianBlur(4))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def variant(jpeg: bytes, number: int) -> bytes:
    """The same picture with a numbered JPEG comment: other bytes, the same decoding work."""
    comment = f"bench upload {number}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return jpeg[:2] + segment + jpeg[2:]


def multipart(data: bytes, filename: str) -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def in_process_rate(jpeg: bytes, count: int, threads: int, offset: int) -> float:
    settings = Settings(STORAGE_BACKEND="local")  # the image work only: no store
    embedder = create_embedder(settings)
    # The app's own image work: with VERIFY_NEAR_DUPLICATES, local features too.
    policy = UploadPolicy.from_settings(settings)
    files = [variant(jpeg, offset + n) for n in range(count)]

    def work(data: bytes) -> object:
        return analyse_image(
            data,
            allowed_formats=policy.allowed_formats,
            max_pixels=policy.max_pixels,
            embedder=embedder,
            local_features=policy.local_features,
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, files[:threads]))  # warm-up
        started = time.perf_counter()
        list(pool.map(work, files))
        return count / (time.perf_counter() - started)


async def http_rate(
    client: KeepAliveClient, bodies: list[bytes], concurrency: int
) -> tuple[float, float]:
    """Uploads per second, and the p99 of /health/live polled meanwhile (ms)."""
    probe_times: list[float] = []
    done = asyncio.Event()

    async def upload(number: int) -> object:
        status, body = await client.request(
            "POST",
            "/api/v1/images/upload",
            bodies[number],
            f"multipart/form-data; boundary={BOUNDARY}",
        )
        assert status == 201, body
        return body

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            status, _ = await client.request("GET", "/api/v1/health/live")
            assert status == 200
            probe_times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe())
    started = time.perf_counter()
    await latencies(upload, len(bodies), concurrency)
    rate = len(bodies) / (time.perf_counter() - started)
    done.set()
    await prober
    return rate, percentile(probe_times, 0.99)


async def run(baseline: Path | None) -> None:
    counter = 0
    rows = []
    workers = os.environ.get("WORKERS", str(min(os.cpu_count() or 1, 8)))
    backend = os.environ.get("STORAGE_BACKEND", "local")
    print(f"app: WORKERS={workers} STORAGE_BACKEND={backend}", flush=True)
    checkouts = {"http": ROOT} | ({"baseline": baseline} if baseline else {})
    async with AsyncExitStack() as stack:
        server_dsn = stack.enter_context(postgres_server())
        storage = stack.enter_context(storage_environment("bench-upload"))
        clients: dict[str, KeepAliveClient] = {}
        apps: dict[str, RunningApp] = {}
        for number, (name, checkout) in enumerate(checkouts.items()):
            url = await fresh_database(server_dsn, f"image_bench_upload_{number}")
            environment = {
                "DATABASE_URL": url.render_as_string(hide_password=False),
                # Deployed for throughput: a worker process per core (as docker-compose does).
                "WORKERS": workers,
                **storage,
            }
            apps[name] = await stack.enter_async_context(running_app(environment, checkout))
            clients[name] = await stack.enter_async_context(KeepAliveClient(apps[name].url, 9))
        for size, (width, height) in SIZES.items():
            jpeg = photo_jpeg(width, height)
            for concurrency in CONCURRENCY:
                count = UPLOADS[size]
                measured: dict[str, tuple[float, float, float]] = {}
                for name, client in clients.items():
                    bodies = [
                        multipart(variant(jpeg, counter + n), f"{size}-{counter + n}.jpg")
                        for n in range(count)
                    ]
                    counter += count
                    cpu_before = apps[name].cpu_seconds()
                    rate, live_p99 = await http_rate(client, bodies, concurrency)
                    cpu_ms = (apps[name].cpu_seconds() - cpu_before) / count * 1000
                    measured[name] = rate, live_p99, cpu_ms
                local = await asyncio.to_thread(
                    in_process_rate, jpeg, count, concurrency, 10**6 + counter
                )
                rate, live_p99, cpu_ms = measured["http"]
                rows.append(
                    (size, concurrency, rate, local, live_p99, cpu_ms, measured.get("baseline"))
                )
                line = (
                    f"{size:>5} c={concurrency}: http {rate:6.1f}/s  in-process "
                    f"{local:6.1f}/s  ratio {rate / local:.2f}  live p99 {live_p99:.1f} ms  "
                    f"server CPU {cpu_ms:.1f} ms/upload"
                )
                if "baseline" in measured:
                    base_rate, base_p99, base_cpu_ms = measured["baseline"]
                    line += (
                        f"  | baseline http {base_rate:6.1f}/s ratio {base_rate / local:.2f} "
                        f"live p99 {base_p99:.1f} ms server CPU {base_cpu_ms:.1f} ms/upload"
                    )
                print(line, flush=True)
    size, concurrency, rate, local, live_p99, cpu_ms, base = next(
        row for row in rows if row[0] == "1MP" and row[1] == 8
    )
    if base is not None:
        print(
            f"baseline ({baseline}): ratio={base[0] / local:.2f} http_per_s={base[0]:.1f} "
            f"server_cpu_ms={base[2]:.1f}"
        )
    print(
        f"upload: size={size} concurrency={concurrency} http_per_s={rate:.1f} "
        f"inprocess_per_s={local:.1f} ratio={rate / local:.2f} live_p99_ms={live_p99:.1f} "
        f"server_cpu_ms={cpu_ms:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this project (with its .venv), measured in the same run",
    )
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    asyncio.run(run(arguments.baseline))


if __name__ == "__main__":
    main()
