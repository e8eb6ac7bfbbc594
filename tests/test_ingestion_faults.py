"""Ingestion under stress, over real HTTP: concurrent duplicates, disconnects, a database that
dies or stalls, orphans, and shutdown while uploads are in flight."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import make_url

from app.core.embedded_postgres import EmbeddedPostgres
from bench.harness import free_port, postgres_processes
from tests.support.app import DatabaseFactory, make_settings, settings_on_new_database
from tests.support.images import encode, jpeg_bytes, scene
from tests.support.live_server import live_server, wait_until_ready
from tests.support.storage import storage_state

ROOT = Path(__file__).resolve().parents[1]
UPLOAD = "/api/v1/images/upload"


async def test_concurrent_identical_uploads_store_one_row_and_one_file(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "faults_duplicates")
    data = jpeg_bytes(300, 200)
    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/api/v1/images/upload", files={"file": (f"{n}.jpg", data)})
                    for n in range(8)
                )
            )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 7 + [201]
    assert len({response.json()["id"] for response in responses}) == 1
    rows, orphans, missing = await storage_state(settings, url)
    assert (rows, orphans, missing) == (1, [], [])
    assert len([p for p in settings.image_dir.rglob("*") if p.is_file()]) == 1


async def test_a_client_that_disconnects_mid_upload_leaves_nothing_behind(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "faults_disconnect")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        + jpeg_bytes(800, 600)
    )
    with live_server(settings) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/images/upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(body) + 1000}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert (await client.get("/api/v1/health/live")).status_code == 200
    rows, orphans, missing = await storage_state(settings, url)
    assert (rows, orphans, missing) == (0, [], [])
    assert [p for p in settings.image_dir.rglob("*") if p.is_file()] == []


async def test_uploads_survive_the_embedded_database_dying_and_stalling(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # embedded PostgreSQL under tmp_path, watched
    pictures = [encode(scene(160, 120, seed=seed), "JPEG", quality=85) for seed in range(90)]
    accepted: list[str] = []
    statuses: list[int] = []
    refused: list[int] = []

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

            async def uploader(worker: int) -> None:
                for number in range(worker, len(pictures), 3):
                    response = await client.post(
                        "/api/v1/images/upload", files={"file": (f"{number}.jpg", pictures[number])}
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 201:
                        accepted.append(response.json()["id"])
                    else:
                        refused.append(number)
                    await asyncio.sleep(0.05)

            async def faults() -> None:
                await asyncio.sleep(0.8)
                for process in postgres_processes(settings.embedded_pgdata_dir)[:1]:
                    process.kill()  # the postmaster dies; the watchdog starts a new one
                await asyncio.sleep(4)
                stalled = postgres_processes(settings.embedded_pgdata_dir)
                for process in stalled:
                    process.suspend()
                await asyncio.sleep(2)
                for process in stalled:
                    process.resume()

            await asyncio.gather(uploader(0), uploader(1), uploader(2), faults())
            # The service comes back by itself: no restart, just a little patience.
            ready = await wait_until_ready(client, seconds=120)
            # Whatever was refused during the faults can simply be sent again.
            retried = [
                await client.post("/api/v1/images/upload", files={"file": ("r.jpg", pictures[n])})
                for n in refused
            ]
            accepted += [r.json()["id"] for r in retried if r.status_code == 201]
            found = [await client.get(f"/api/v1/images/{image_id}") for image_id in accepted]
            # Searches run on a pool of their own; it too is back without a restart.
            similar = await client.get(f"/api/v1/images/{accepted[-1]}/similar")

        dsn = EmbeddedPostgres(settings.embedded_pgdata_dir).start()  # the one running
        url = make_url(dsn).set(drivername="postgresql+asyncpg", database=settings.POSTGRES_DB)
        rows, orphans, missing = await storage_state(settings, url)

    assert set(statuses) <= {201, 503}, statuses
    assert ready
    assert all(r.status_code in {200, 201} for r in retried)  # 200: it had been stored after all
    assert all(response.status_code == 200 for response in found)
    assert similar.status_code == 200, similar.text
    assert len(set(accepted)) == len(accepted)
    assert rows == len(pictures)  # each picture stored exactly once
    assert (orphans, missing) == ([], [])  # every row has its file, every file its row


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    port = free_port()
    environment = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "WARNING",
    }
    environment.pop("DATABASE_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=environment)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)

        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
            + jpeg_bytes(400, 300)
            + b"\r\n--b--\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(
                b"POST /api/v1/images/upload HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:1000]
            )
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            connection.sendall(body[1000:])
            answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        # uvicorn ends by re-raising the signal once it has drained and shut down.
        assert server.wait(timeout=30) in {0, -signal.SIGTERM}
    finally:
        if server.poll() is None:
            server.kill()
    assert postgres_processes(tmp_path / "data" / "postgres") == []


async def test_a_stalled_database_gets_every_endpoint_a_503_and_readiness_not_ready(
    tmp_path: Path,
) -> None:
    # How soon the answers come is measured by `python -m bench.stall`; here the client waits
    # at most 10 s, less than a stalled database used to hold a request (12 s).
    settings = make_settings(tmp_path, DB_STATEMENT_TIMEOUT=1.0)  # embedded PostgreSQL
    picture = encode(scene(160, 120, seed=3), "JPEG")
    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            image_id = (await client.post(UPLOAD, files={"file": ("a.jpg", picture)})).json()["id"]
            # Pooled connections as well as new ones meet the stalled server.
            await asyncio.gather(*(client.get("/api/v1/images/") for _ in range(4)))
            stalled = postgres_processes(settings.embedded_pgdata_dir)
            for process in stalled:
                process.suspend()
            try:
                answers = {
                    f"{method} {path}": await client.request(method, path, files=files)
                    for method, path, files in stalled_requests(image_id, picture)
                }
                probes = {
                    path: await client.get(path)
                    for path in (
                        "/api/v1/health/ready",
                        "/api/v1/health",
                        "/api/v1/health/detailed",
                        "/api/v1/health/live",
                    )
                }
            finally:
                for process in stalled:
                    process.resume()
            back = await wait_until_ready(client)

    for request, response in answers.items():
        assert response.status_code == 503, (request, response.text)
        assert response.json()["code"] == "database_unavailable", request
        assert response.headers["retry-after"].isdigit()
    assert probes["/api/v1/health/ready"].status_code == 503
    # The store still answers: only the database is named.
    assert probes["/api/v1/health/ready"].json() == {
        "status": "not_ready",
        "database": "unavailable",
        "storage": "ok",
    }
    assert probes["/api/v1/health"].json()["database"] == "unavailable"
    assert probes["/api/v1/health/detailed"].status_code == 503
    assert probes["/api/v1/health/detailed"].json()["database"]["status"] == "unavailable"
    assert probes["/api/v1/health/live"].status_code == 200
    assert back


def stalled_requests(image_id: str, picture: bytes) -> list[tuple[str, str, Any]]:
    """Every endpoint that needs the database: method, path, multipart files."""
    image = f"/api/v1/images/{image_id}"
    upload = {"file": ("b.jpg", picture)}
    return [
        ("GET", "/api/v1/images/", None),
        ("GET", image, None),
        ("GET", f"{image}/similar", None),
        ("GET", f"{image}/file", None),
        ("GET", f"{image}/thumbnail", None),
        ("POST", UPLOAD, upload),
        ("POST", "/api/v1/images/search", upload),
        ("DELETE", image, None),
        ("GET", "/metrics", None),
    ]
