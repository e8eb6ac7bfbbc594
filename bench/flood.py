"""A flood of large uploads against a small upload queue, and the same flood with no bound.

64 distinct 12-megapixel JPEGs are uploaded at once, each on a connection of its own, with
`Expect: 100-continue` as curl sends it for large bodies (the body goes out only when the
server asks for it). Against the app with IMAGE_WORKERS=2 and a small UPLOAD_QUEUE_LIMIT, and
against the same app with a bound no flood reaches (the baseline), one server process each,
the benchmark reports:
- every answer: 2xx, or 429/503 with Retry-After (anything else, or a lost connection, is
  counted as a failure);
- none lost: the rows in the database equal the 201 answers;
- memory: the server's peak RSS during the flood, and its RSS before;
- the p99 of GET /api/v1/health/live, polled every 10 ms on a connection of its own meanwhile;
- how fast refusals come back, and how many bodies never had to be sent;
- then the same flood again with clients that come back after Retry-After until stored: the
  time until all 64 are stored, against the baseline's.

    .venv/bin/python -m bench.flood
    .venv/bin/python -m bench.flood --queue-limit 8 --uploads 64
"""

import argparse
import asyncio
import os
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import asyncpg
import psutil

from bench.harness import (
    fresh_database,
    libpq_dsn,
    percentile,
    postgres_server,
    running_app,
)
from bench.upload import BOUNDARY, SIZES, multipart, photo_jpeg, variant

IMAGE_WORKERS = 2
UNBOUNDED = 100_000  # a queue limit no flood here reaches: the service as it was


@dataclass
class Answer:
    status: int  # 0: the connection failed before a response
    retry_after: str | None
    seconds: float
    body_sent: bool


@dataclass
class Flood:
    answers: list[Answer] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    peak_rss: int = 0
    idle_rss: int = 0
    seconds: float = 0.0
    rows: int = 0

    def count(self, statuses: set[int]) -> int:
        return sum(answer.status in statuses for answer in self.answers)

    @property
    def answered_properly(self) -> bool:
        return all(
            200 <= a.status < 300 or (a.status in (429, 503) and a.retry_after)
            for a in self.answers
        )


async def upload(host: str, port: int, body: bytes) -> Answer:
    """One upload on a new connection, the body sent only after `100 Continue`."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    sent = False
    try:
        writer.write(
            (
                f"POST /api/v1/images/upload HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            await writer.drain()
            sent = True
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(
            int(lines[0].split()[1]),
            headers.get("retry-after"),
            time.perf_counter() - started,
            sent,
        )
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return Answer(0, None, time.perf_counter() - started, sent)
    finally:
        writer.close()


async def upload_until_stored(host: str, port: int, body: bytes) -> int:
    """Upload, coming back after Retry-After while refused; the number of attempts."""
    for attempt in range(1, 1000):
        answer = await upload(host, port, body)
        if answer.status in (200, 201):
            return attempt
        await asyncio.sleep(float(answer.retry_after or 1))
    raise RuntimeError("an upload was never stored")


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(process.memory_info().rss for process in [root, *root.children(recursive=True)])


def server_pid(port: int) -> int:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and getattr(connection.laddr, "port", 0) == port:
            assert connection.pid is not None
            return connection.pid
    raise RuntimeError(f"nothing listens on port {port}")


async def flood(base_url: str, bodies: list[bytes], *, retry: bool) -> Flood:
    host, port_text = base_url.removeprefix("http://").split(":")
    port = int(port_text)
    pid = server_pid(port)
    result = Flood(idle_rss=tree_rss(pid))
    done = asyncio.Event()

    async def probe() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while not done.is_set():
            started = time.perf_counter()
            writer.write(f"GET /api/v1/health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            result.probe_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        writer.close()

    async def sample_memory() -> None:
        while not done.is_set():
            result.peak_rss = max(result.peak_rss, tree_rss(pid))
            await asyncio.sleep(0.02)

    background = [asyncio.create_task(probe()), asyncio.create_task(sample_memory())]
    started = time.perf_counter()
    if retry:
        await asyncio.gather(*(upload_until_stored(host, port, body) for body in bodies))
    else:
        result.answers = list(await asyncio.gather(*(upload(host, port, body) for body in bodies)))
    result.seconds = time.perf_counter() - started
    done.set()
    await asyncio.gather(*background)
    return result


async def count_rows(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        rows: int = await connection.fetchval("SELECT count(*) FROM images")
        return rows
    finally:
        await connection.close()


def describe(name: str, result: Flood) -> str:
    answers = result.answers
    refused = [a for a in answers if a.status in (429, 503)]
    refusal_ms = [a.seconds * 1000 for a in refused] or [0.0]
    refusal_p50, refusal_p99 = percentile(refusal_ms, 0.5), percentile(refusal_ms, 0.99)
    created = result.count({201})
    return (
        f"{name}: 201 x {created}, 200 x {result.count({200})}, "
        f"503 x {result.count({503})}, 429 x {result.count({429})}, "
        f"failed/other x {len(answers) - result.count({200, 201, 429, 503})}; "
        f"every answer 2xx or 429/503 with Retry-After: {result.answered_properly}; "
        f"rows {result.rows} vs 201s {created} (lost {created - result.rows}); "
        f"peak RSS {result.peak_rss / 2**20:.0f} MiB (idle {result.idle_rss / 2**20:.0f} MiB); "
        f"live p99 {percentile(result.probe_ms, 0.99):.1f} ms; "
        f"refusals p50/p99 {refusal_p50:.1f}/{refusal_p99:.1f} ms; "
        f"bodies never sent {sum(not a.body_sent for a in answers)}; "
        f"all answered in {result.seconds:.2f} s"
    )


async def run(uploads: int, queue_limit: int) -> None:
    width, height = SIZES["12MP"]
    jpeg = photo_jpeg(width, height)
    print(
        f"flood: {uploads} x 12MP uploads ({len(jpeg) / 2**20:.1f} MiB each) at once, "
        f"IMAGE_WORKERS={IMAGE_WORKERS}, one server process each",
        flush=True,
    )
    setups = {
        f"bounded (UPLOAD_QUEUE_LIMIT={queue_limit})": queue_limit,
        "baseline (no bound)": UNBOUNDED,
    }
    floods: dict[str, tuple[Flood, Flood]] = {}
    async with AsyncExitStack() as stack:
        server_dsn = stack.enter_context(postgres_server())
        for number, (name, limit) in enumerate(setups.items()):
            url = await fresh_database(server_dsn, f"image_bench_flood_{number}")
            environment = {
                "DATABASE_URL": url.render_as_string(hide_password=False),
                "WORKERS": "1",
                "IMAGE_WORKERS": str(IMAGE_WORKERS),
                "UPLOAD_QUEUE_LIMIT": str(limit),
            }
            async with running_app(environment) as app:
                base_url = app.url
                offset = number * 10 * uploads
                once = [
                    multipart(variant(jpeg, offset + n), f"{offset + n}.jpg")
                    for n in range(uploads)
                ]
                first = await flood(base_url, once, retry=False)
                first.rows = await count_rows(libpq_dsn(url))
                print(describe(name, first), flush=True)
                again = [
                    multipart(variant(jpeg, offset + uploads + n), f"r{offset + n}.jpg")
                    for n in range(uploads)
                ]
                second = await flood(base_url, again, retry=True)
                second.rows = await count_rows(libpq_dsn(url)) - first.rows
                print(
                    f"{name}, clients retrying after Retry-After: all {uploads} stored "
                    f"({second.rows} rows) in {second.seconds:.2f} s, peak RSS "
                    f"{second.peak_rss / 2**20:.0f} MiB, live p99 "
                    f"{percentile(second.probe_ms, 0.99):.1f} ms",
                    flush=True,
                )
                floods[name] = (first, second)
    (bounded, bounded_retry), (base, base_retry) = floods.values()
    print(
        f"flood: peak_rss_ratio={bounded.peak_rss / base.peak_rss:.2f} "
        f"live_p99_ms={percentile(bounded.probe_ms, 0.99):.1f} "
        f"baseline_live_p99_ms={percentile(base.probe_ms, 0.99):.1f} "
        f"all_stored_seconds={bounded_retry.seconds:.2f} "
        f"baseline_all_stored_seconds={base_retry.seconds:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=64, help="uploads sent at once")
    parser.add_argument("--queue-limit", type=int, default=2, help="UPLOAD_QUEUE_LIMIT")
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    asyncio.run(run(arguments.uploads, arguments.queue_limit))


if __name__ == "__main__":
    main()
