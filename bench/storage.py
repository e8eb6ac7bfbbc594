"""The two image stores side by side, in one run: STORAGE_BACKEND=local (the baseline) and
STORAGE_BACKEND=s3 on a SeaweedFS started for the run.

- uploads of distinct 1- and 12-megapixel JPEGs over HTTP, concurrency 8: images per second, and the
  CPU the server process spent per upload (and, for S3, the CPU of the store's own process);
- GET /file of the stored images, concurrency 8: requests and megabytes per second, CPU per
  request;
- the store alone, in this process: CPU per `put` of such a file (staged, fsynced and linked;
  or one signed PUT), and per `get`.

The two apps run one server process each (WORKERS=1) and take turns in blocks, so both see the
same moments of this shared machine.

    .venv/bin/python -m bench.storage
"""

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import Settings
from app.core.resources import create_store
from app.core.storage import ImageStore, image_key
from bench.harness import (
    KeepAliveClient,
    RunningApp,
    cpu_seconds,
    fresh_database,
    latencies,
    postgres_server,
    running_app,
)
from bench.seaweedfs import seaweedfs_server
from bench.upload import BOUNDARY, multipart, photo_jpeg, variant

BACKENDS = ("local", "s3")
BLOCKS = 4
STORE_OPERATIONS = 100
CONCURRENCY = 8


@dataclass
class Tally:
    """One backend's counts and seconds, summed over its blocks."""

    count: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    store_cpu: float = 0.0
    nbytes: int = 0
    image_ids: list[str] = field(default_factory=list)

    def per_second(self) -> float:
        return self.count / self.seconds

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.count


async def measured(
    tally: Tally,
    server: RunningApp,
    store_pid: int | None,
    run: Callable[[], Awaitable[int]],
) -> None:
    """Run one block and add its count, wall time and CPU to `tally` (the store's CPU when it
    runs in a process of its own, `store_pid`)."""

    def store_cpu() -> float:
        return 0.0 if store_pid is None else cpu_seconds(store_pid)

    cpu_before, store_before = server.cpu_seconds(), store_cpu()
    started = time.perf_counter()
    tally.count += await run()
    tally.seconds += time.perf_counter() - started
    tally.server_cpu += server.cpu_seconds() - cpu_before
    tally.store_cpu += store_cpu() - store_before


async def store_cost(store: ImageStore, jpeg: bytes) -> tuple[float, float]:
    """CPU milliseconds of this process (its worker threads included) per put and per get of a
    `jpeg`-sized object, one at a time."""
    keys = [image_key(uuid.uuid4().hex * 2, ".jpg") for _ in range(STORE_OPERATIONS)]
    bodies = [variant(jpeg, n) for n in range(STORE_OPERATIONS)]
    started = time.process_time()
    for key, body in zip(keys, bodies, strict=True):
        await store.put(key, body, content_type="image/jpeg", filename="bench.jpg")
    put_cpu = time.process_time() - started
    started = time.process_time()
    for key in keys:
        await store.get(key)
    get_cpu = time.process_time() - started
    for key in keys:
        await store.delete(key)
    return 1000 * put_cpu / STORE_OPERATIONS, 1000 * get_cpu / STORE_OPERATIONS


def store_settings(backend: str, environment: dict[str, str], folder: Path) -> Settings:
    values: dict[str, object] = {"DATA_DIR": folder, "DATABASE_URL": None}
    if backend == "s3":
        values.update(environment)
    return Settings.model_validate(values)


@dataclass(frozen=True)
class Size:
    width: int
    height: int
    uploads_per_block: int
    gets_per_block: int


SIZES = {"1MP": Size(1155, 866, 40, 400), "12MP": Size(4000, 3000, 8, 80)}


async def run() -> None:
    counter = 0
    uploads = {(size, backend): Tally() for size in SIZES for backend in BACKENDS}
    files = {(size, backend): Tally() for size in SIZES for backend in BACKENDS}
    costs: dict[tuple[str, str], tuple[float, float]] = {}
    jpegs = {name: photo_jpeg(size.width, size.height) for name, size in SIZES.items()}
    async with AsyncExitStack() as stack:
        server_dsn = stack.enter_context(postgres_server())
        s3_folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-s3-"))
        seaweed = stack.enter_context(seaweedfs_server(Path(s3_folder)))
        assert seaweed.process is not None
        s3_environment = seaweed.server.environment("bench-storage")
        clients: dict[str, KeepAliveClient] = {}
        servers: dict[str, RunningApp] = {}
        for backend in BACKENDS:
            url = await fresh_database(server_dsn, f"image_bench_storage_{backend}")
            environment = {
                "DATABASE_URL": url.render_as_string(hide_password=False),
                "WORKERS": "1",
                **(s3_environment if backend == "s3" else {}),
            }
            servers[backend] = await stack.enter_async_context(running_app(environment))
            clients[backend] = await stack.enter_async_context(
                KeepAliveClient(servers[backend].url, 9)
            )
        stores = {"s3": seaweed.process.pid, "local": None}

        for name, size in SIZES.items():
            for _ in range(BLOCKS):
                for backend in BACKENDS:
                    bodies = [
                        multipart(variant(jpegs[name], counter + n), f"{counter + n}.jpg")
                        for n in range(size.uploads_per_block)
                    ]
                    counter += size.uploads_per_block
                    block = upload_block(clients[backend], uploads[name, backend], bodies)
                    await measured(uploads[name, backend], servers[backend], stores[backend], block)
            for _ in range(BLOCKS):
                for backend in BACKENDS:
                    tally = files[name, backend]
                    ids = uploads[name, backend].image_ids
                    block = file_block(clients[backend], tally, ids, size.gets_per_block)
                    await measured(tally, servers[backend], stores[backend], block)

        for backend in BACKENDS:
            with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
                settings = store_settings(backend, s3_environment, Path(folder))
                store = await create_store(settings)
                for name in SIZES:
                    costs[name, backend] = await store_cost(store, jpegs[name])

    print(
        f"{BLOCKS} blocks per backend and size, taking turns; concurrency {CONCURRENCY}; "
        "one server process per backend; CPU in ms"
    )
    for name in SIZES:
        print(f"{name} JPEG, {len(jpegs[name]) / 1024:.0f} KiB:")
        for backend in BACKENDS:
            up, get = uploads[name, backend], files[name, backend]
            put_ms, get_ms = costs[name, backend]
            in_store = backend == "s3"
            print(
                f"  {backend:>5}: upload {up.per_second():6.1f}/s, server CPU "
                f"{up.cpu_ms(up.server_cpu):5.2f}/upload"
                + (f" + store {up.cpu_ms(up.store_cpu):.2f}" if in_store else "")
                + f" | /file {get.per_second():6.1f}/s {get.nbytes / get.seconds / 2**20:6.1f} "
                f"MiB/s, server CPU {get.cpu_ms(get.server_cpu):5.2f}/request"
                + (f" + store {get.cpu_ms(get.store_cpu):.2f}" if in_store else "")
                + f" | store alone: put {put_ms:.2f}, get {get_ms:.2f}"
            )
    for name in SIZES:
        local, s3 = uploads[name, "local"], uploads[name, "s3"]
        file_ratio = files[name, "s3"].per_second() / files[name, "local"].per_second()
        print(
            f"storage: size={name} upload_s3_over_local={s3.per_second() / local.per_second():.2f}"
            f" file_s3_over_local={file_ratio:.2f} put_cpu_ms_local={costs[name, 'local'][0]:.2f}"
            f" put_cpu_ms_s3={costs[name, 's3'][0]:.2f}"
        )


def upload_block(
    client: KeepAliveClient, tally: Tally, bodies: list[bytes]
) -> Callable[[], Awaitable[int]]:
    async def block() -> int:
        async def one(number: int) -> None:
            status, body = await client.request(
                "POST",
                "/api/v1/images/upload",
                bodies[number],
                f"multipart/form-data; boundary={BOUNDARY}",
            )
            assert status == 201, body
            tally.image_ids.append(body.split(b'"id":"')[1][:36].decode())

        await latencies(one, len(bodies), CONCURRENCY)
        return len(bodies)

    return block


def file_block(
    client: KeepAliveClient, tally: Tally, ids: list[str], count: int
) -> Callable[[], Awaitable[int]]:
    async def block() -> int:
        async def one(number: int) -> None:
            status, body = await client.request(
                "GET", f"/api/v1/images/{ids[number % len(ids)]}/file"
            )
            assert status == 200, body[:200]
            tally.nbytes += len(body)

        await latencies(one, count, CONCURRENCY)
        return count

    return block


def main() -> None:
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    asyncio.run(run())


if __name__ == "__main__":
    main()
