"""What the benchmarks share: a PostgreSQL to work in, the app served on a free port, and
latency statistics."""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from sqlalchemy import URL

from app.core.embedded_postgres import postgres_server as embedded_or_external
from app.core.embedded_postgres import recreate_database

ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 300  # how long an app started by `running_app` may take to be ready


@contextmanager
def postgres_server() -> Iterator[str]:
    """A server DSN: DATABASE_URL's server if set, else a throwaway embedded PostgreSQL."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as folder,
        embedded_or_external(os.environ.get("DATABASE_URL"), Path(folder)) as dsn,
    ):
        yield dsn


async def fresh_database(server_dsn: str, name: str) -> URL:
    """Drop and create database `name` (the benchmark's own, never the service's)."""
    return await recreate_database(server_dsn, name)


def libpq_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now (held together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def listening_processes(pid: int, port: int) -> int:
    """How many processes of the tree under `pid` listen on `port`."""
    root = psutil.Process(pid)
    listening = 0
    for process in [root, *root.children(recursive=True)]:
        try:  # a helper process (multiprocessing's) may be gone by now
            connections = process.net_connections()
        except psutil.NoSuchProcess:
            continue
        listening += any(
            connection.status == psutil.CONN_LISTEN and connection.laddr[1] == port
            for connection in connections
        )
    return listening


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The PostgreSQL server whose data directory is `pgdata`, and all its processes."""
    postmasters = [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "postgres"
        and str(pgdata) in " ".join(process.info["cmdline"] or [])
    ]
    return postmasters + [child for p in postmasters for child in p.children(recursive=True)]


async def wait_for_listeners(pid: int, port: int, count: int, seconds: float = 30) -> None:
    """Wait until `count` processes under `pid` listen on `port`: with several workers, one
    ready worker does not mean that the others take connections yet."""
    for _ in range(int(seconds * 10)):
        if listening_processes(pid, port) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"fewer than {count} processes listen on port {port}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process `pid` and its children (a server's
    workers, a store's helpers)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class RunningApp:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its worker processes: what the benchmarks
        divide by the requests served, steadier than throughput on a shared machine."""
        return cpu_seconds(self.pid)


@asynccontextmanager
async def running_app(
    environment: dict[str, str], checkout: Path = ROOT, *, ready_within: float = READY_SECONDS
) -> AsyncIterator[RunningApp]:
    """`python -m app serve` in its own process (as in production), once it is ready; its URL
    and process id (to measure it, or kill it).

    `checkout`: another working tree of this project (with its own `.venv`), to measure an
    earlier commit side by side with this one (the benchmarks' `--baseline`). `ready_within`:
    seconds the start may take (longer on a busy shared machine)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as data_dir:
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": data_dir,
            "LOG_LEVEL": "WARNING",
            **environment,
        }
        python = sys.executable if checkout == ROOT else str(checkout / ".venv" / "bin" / "python")
        process = subprocess.Popen(  # noqa: ASYNC220, S603 - started once; our own command
            [python, "-m", "app", "serve"], cwd=checkout, env=env
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            # Start-up checks scan the table (a few seconds at a million rows) and a busy
            # machine slows the model's loading: allow minutes, not seconds.
            deadline = time.monotonic() + ready_within
            async with httpx.AsyncClient() as client:
                while time.monotonic() < deadline:
                    try:
                        if (await client.get(f"{base_url}/api/v1/health/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if process.poll() is not None:
                        raise RuntimeError("the app exited during start-up")
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("the app did not become ready")
            await wait_for_listeners(process.pid, port, int(env.get("WORKERS", "1")))
            yield RunningApp(base_url, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


async def latencies(
    call: Callable[[int], Awaitable[object]], count: int, concurrency: int
) -> list[float]:
    """Milliseconds of `count` calls (argument: the call's number), `concurrency` at a time."""
    results: list[float] = []
    next_call = 0

    async def worker() -> None:
        nonlocal next_call
        while next_call < count:
            number = next_call
            next_call += 1
            started = time.perf_counter()
            await call(number)
            results.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5):7.2f}  p95 {percentile(values, 0.95):7.2f}  "
        f"p99 {percentile(values, 0.99):7.2f} ms"
    )


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class KeepAliveClient:
    """A minimal HTTP/1.1 client over a few keep-alive connections.

    The benchmarks measure the service, so the client must cost next to nothing: httpx alone
    adds about a millisecond per request here, more than the service spends on a search.

    A server closes kept-alive connections that stay idle (uvicorn after `timeout_keep_alive`,
    5 s), as the connections do while a benchmark prepares its next 12 MP bodies. A request
    that finds its connection closed before any answer came is sent again on a new one, as
    browsers and HTTP libraries do: the server never read it."""

    def __init__(self, base_url: str, connections: int) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port, self.size = host, int(port), connections
        # Last in, first out: one request at a time reuses one connection, as clients do.
        # None: a connection to open when it is next needed.
        self.idle: asyncio.Queue[Connection | None] = asyncio.LifoQueue()

    async def __aenter__(self) -> "KeepAliveClient":
        for _ in range(self.size):
            self.idle.put_nowait(await self._connect())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        while not self.idle.empty():
            if (connection := self.idle.get_nowait()) is not None:
                connection[1].close()

    async def _connect(self) -> Connection:
        return await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, bytes]:
        """Send one request on an idle connection; its status and body. A connection the server
        closed before answering is replaced and the request sent once more; one it closed
        after its answer began is an error; one whose answer says `Connection: close` is not
        used again."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        message = head.encode() + b"\r\n" + body
        connection = await self.idle.get()
        kept: Connection | None = None
        try:
            if connection is None or connection[0].at_eof():
                connection = await self._connect()
            try:
                status, answer, keep_alive = await _exchange(connection, message)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise  # the server had started to answer: not safe to send again
                connection[1].close()
                connection = await self._connect()
                status, answer, keep_alive = await _exchange(connection, message)
            if keep_alive:
                kept = connection
            else:
                connection[1].close()
            return status, answer
        finally:
            self.idle.put_nowait(kept)


async def _exchange(connection: Connection, message: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read its answer: status, body, whether the connection stays open."""
    reader, writer = connection
    writer.write(message)
    await writer.drain()
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(lines[0].split()[1]), body, fields.get("connection", "").lower() != "close"
