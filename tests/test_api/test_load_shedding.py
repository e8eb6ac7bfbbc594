"""The upload queue: beyond IMAGE_WORKERS + UPLOAD_QUEUE_LIMIT uploads in progress, an upload or
a search by upload is refused at once with 503 and Retry-After, before its body is read."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from app.core.database import create_engine
from tests.support.app import DatabaseFactory, app_client, settings_on_new_database
from tests.support.database import row_count
from tests.support.http import assert_error
from tests.support.images import jpeg_bytes
from tests.support.live_server import live_server

BOUNDARY = "shedboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(data: bytes, filename: str) -> tuple[bytes, bytes]:
    """The head and the tail of a multipart body around `data`."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data, f"\r\n--{BOUNDARY}--\r\n".encode()


class HeldBody:
    """A request body that sends its first part, then waits to be released; `started` tells
    whether anything asked for it."""

    def __init__(self, data: bytes) -> None:
        self.first, self.rest = multipart(data, "held.jpg")
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started.set()
        yield self.first
        await self.release.wait()
        yield self.rest


async def test_a_full_queue_refuses_uploads_before_reading_their_body(
    create_database: DatabaseFactory, tmp_path: Path
) -> None:
    # Room for two: one decoding (IMAGE_WORKERS) and one waiting (UPLOAD_QUEUE_LIMIT). The
    # two uploads in progress commit side by side, so the app has a database of its own.
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "shedding", IMAGE_WORKERS=1, UPLOAD_QUEUE_LIMIT=1
    )
    async with app_client(settings) as client:
        held = [HeldBody(jpeg_bytes(seed=1)), HeldBody(jpeg_bytes(seed=5))]
        admitted = [
            asyncio.create_task(
                client.post(
                    "/api/v1/images/upload", content=body, headers={"Content-Type": MULTIPART}
                )
            )
            for body in held
        ]
        for body in held:
            await asyncio.wait_for(body.started.wait(), 30)
        refused_bodies = [HeldBody(jpeg_bytes(seed=2)), HeldBody(jpeg_bytes(seed=3))]
        upload = await client.post(
            "/api/v1/images/upload",
            content=refused_bodies[0],
            headers={"Content-Type": MULTIPART},
        )
        search = await client.post(
            "/api/v1/images/search",
            content=refused_bodies[1],
            headers={"Content-Type": MULTIPART, "Expect": "100-continue"},
        )
        listing = await client.get("/api/v1/images/")
        for body in held:
            body.release.set()
        stored = await asyncio.gather(*admitted)
        after = await client.post(
            "/api/v1/images/upload", files={"file": ("later.jpg", jpeg_bytes(seed=4))}
        )
        metrics = (await client.get("/metrics")).text
    engine = create_engine(url, pool_size=1, max_overflow=0)
    async with engine.connect() as connection:
        rows = await row_count(connection)
    await engine.dispose()

    assert_error(upload, 503, "server_busy")
    assert_error(search, 503, "server_busy")
    assert upload.headers["retry-after"] == search.headers["retry-after"] == "1"
    assert not any(body.started.is_set() for body in refused_bodies)  # never read
    # A client waiting for 100 Continue never sends its body: the connection cannot go on.
    assert search.headers["connection"] == "close"
    assert "connection" not in upload.headers
    assert listing.status_code == 200  # reads are not queued
    assert [answer.status_code for answer in stored] == [201, 201]
    assert after.status_code == 201
    assert rows == 3
    assert 'requests_shed_total{reason="server_busy"} 2.0' in metrics
    assert 'image_uploads_total{outcome="server_busy"} 1.0' in metrics
    assert "uploads_in_progress 0.0" in metrics


async def test_over_real_http_a_refused_upload_leaves_its_connection_usable(
    create_database: DatabaseFactory, tmp_path: Path
) -> None:
    settings, _ = await settings_on_new_database(
        create_database, tmp_path, "shedding_http", IMAGE_WORKERS=1, UPLOAD_QUEUE_LIMIT=0
    )
    first, rest = multipart(jpeg_bytes(seed=1), "held.jpg")
    body = b"".join(multipart(jpeg_bytes(640, 480, seed=2), "refused.jpg"))
    head = (
        "POST /api/v1/images/upload HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {{}}\r\n\r\n"
    )
    with live_server(settings) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        # One upload holds the only place: its body is half sent.
        held_reader, held_writer = await asyncio.open_connection(host, int(port))
        held_writer.write(head.format(len(first) + len(rest)).encode() + first)
        await held_writer.drain()
        reader, writer = await asyncio.open_connection(host, int(port))
        async with httpx.AsyncClient(base_url=base_url) as client:
            for _ in range(100):  # until the held upload has its place
                if (await client.get("/metrics")).text.count("uploads_in_progress 1.0"):
                    break
                await asyncio.sleep(0.05)
        # A client that sends its whole body at once, then reads the answer.
        writer.write(head.format(len(body)).encode() + body)
        await writer.drain()
        refused = await reader.readuntil(b"\r\n\r\n")
        length = int(refused.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        refused_body = await reader.readexactly(length)
        # The same connection carries the next request.
        writer.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        next_answer = await reader.readuntil(b"\r\n\r\n")
        held_writer.write(rest)
        await held_writer.drain()
        held = await held_reader.readuntil(b"\r\n\r\n")
        for stream in (writer, held_writer):
            stream.close()

    assert refused.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1\r\n" in refused.lower()
    assert b'"code":"server_busy"' in refused_body
    assert next_answer.startswith(b"HTTP/1.1 200")
    assert held.startswith(b"HTTP/1.1 201")
