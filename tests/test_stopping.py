"""Ctrl-C, the ordinary way to stop a command: one line (and, for the batch commands, what was
done so far), no traceback, exit status 130."""

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.database import create_engine
from app.core.listener import cannot_listen
from tests.support.app import DatabaseFactory, app_client, make_settings, settings_on_new_database
from tests.support.cli import (
    make_run_command,
    poll_until,
    press_ctrl_c,
    server_environment,
    start,
)
from tests.support.images import encode, jpeg_bytes, scene
from tests.support.live_server import live_server, wait_until_ready


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


async def serving(
    create_database: DatabaseFactory,
    tmp_path: Path,
    name: str,
    *,
    program: list[str] | None = None,
) -> tuple[asyncio.subprocess.Process, int, bool]:
    """`python -m app serve` (or `program run`: `make run`) on a database of its own: the
    process, its port and whether it became ready."""
    _, url = await settings_on_new_database(create_database, tmp_path, name)
    environment, port = server_environment(url.render_as_string(hide_password=False), tmp_path)
    process = await start(["run" if program else "serve"], environment, program=program)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        ready = await wait_until_ready(client)
    return process, port, ready


async def test_ctrl_c_stops_serve_after_a_graceful_shutdown(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    server, _, ready = await serving(create_database, tmp_path, "stop_serve")
    code, stdout, stderr = await press_ctrl_c(server)

    assert ready
    assert code == 130
    assert_no_traceback(stdout + stderr)
    assert "Application shutdown complete" in stderr  # in-flight work was let finish
    assert stderr.splitlines()[-1] == "serve: stopped by Ctrl-C"


async def test_make_run_stops_on_ctrl_c_without_make_reporting_an_error(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    process, _, ready = await serving(
        create_database, tmp_path, "stop_make_run", program=make_run_command()
    )
    code, stdout, stderr = await press_ctrl_c(process)

    assert ready
    # make ends as interrupted, which a shell reports as status 130.
    assert code == -signal.SIGINT
    assert_no_traceback(stdout + stderr)
    assert "make:" not in stdout + stderr  # no "make: *** [Makefile: run] Error 130"
    assert stderr.splitlines()[-1] == "serve: stopped by Ctrl-C"


async def test_make_run_stopped_by_sigterm_stops_the_server_too(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    process, port, ready = await serving(
        create_database, tmp_path, "term_make_run", program=make_run_command()
    )
    os.kill(process.pid, signal.SIGTERM)  # make alone, as a process manager stops it
    # The output ends only when every process writing it has: an orphaned server would keep
    # it open (and the port) until the timeout.
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

    assert ready
    assert process.returncode == -signal.SIGTERM
    assert "Application shutdown complete" in stderr.decode()  # a graceful stop
    assert cannot_listen("127.0.0.1", port) is None  # the port is free again


async def test_ctrl_c_stops_an_import_with_what_it_did_so_far(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "stop_import")
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(300):
        (photos / f"{number:03}.jpg").write_bytes(jpeg_bytes(32, 32, seed=number))

    with live_server(settings) as base_url:
        process = await start(
            ["import", str(photos), "--url", base_url, "--concurrency", "1"], dict(os.environ)
        )
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def stored() -> int:
                return int((await client.get("/api/v1/images")).json()["total"])

            await poll_until(lambda: at_least(stored, 3))
            code, stdout, stderr = await press_ctrl_c(process)
            total = await stored()

    assert code == 130
    assert_no_traceback(stdout + stderr)
    [summary] = stdout.splitlines()
    counted = int(summary.split()[1])
    assert summary == (
        f"import: {counted} stored, 0 already stored, 0 rejected, 0 skipped (not images)"
    )
    assert stderr.splitlines() == [f"import: stopped by Ctrl-C after {counted} of 300 images"]
    # The one upload in flight at the stop (--concurrency 1) may have been stored without
    # being counted; 3 were stored before the stop.
    assert 2 <= counted <= total <= counted + 1 < 300


async def test_ctrl_c_stops_reembed_with_the_committed_batches(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    url = await create_database("stop_reembed")
    database_url = url.render_as_string(hide_password=False)
    hash_settings = make_settings(tmp_path, DATABASE_URL=database_url, EMBEDDING_MODEL="hash")
    async with app_client(hash_settings) as client:
        big = encode(scene(2000, 1500, seed=1), "PNG")  # a full decode each: tens of ms
        await client.post("/api/v1/images/upload", files={"file": ("big.png", big)})
    engine = create_engine(url)
    async with engine.begin() as connection:
        # 299 more rows on the same file, each with hashes of its own.
        await connection.execute(text(CLONE_ROWS))
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(hash_settings.DATA_DIR),
        "EMBEDDING_MODEL": "perceptual",
    }

    process = await start(["reembed", "--batch-size", "5"], environment)
    await poll_until(lambda: at_least(lambda: count_perceptual(engine), 5))
    code, _, stderr = await press_ctrl_c(process)
    stored = await count_perceptual(engine)
    await engine.dispose()

    assert code == 130
    assert_no_traceback(stderr)
    stop, summary = stderr.splitlines()
    assert stop == "reembed: stopped by Ctrl-C; what was done is kept, run it again to continue"
    reported = int(summary.split()[1])
    assert summary == f"reembed: {reported} updated, 0 failed, model=perceptual"
    # Committed batches only; the batch whose commit was under way at the stop may have gone
    # through without being counted. At least one batch was committed before the stop.
    assert 5 <= stored < 300
    assert stored - 5 <= reported <= stored


CLONE_ROWS = """
INSERT INTO images (filename, original_filename, content_type, file_size, file_path,
                    content_hash, format, width, height, embedding_vector, embedding_model,
                    metadata, processing_status)
SELECT filename, original_filename, content_type, file_size, file_path,
       md5(n::text) || md5(n::text || '.'), format, width, height, embedding_vector,
       embedding_model, metadata, processing_status
FROM images, generate_series(1, 299) AS n
"""


async def at_least(count: Callable[[], Awaitable[int]], number: int) -> bool:
    return await count() >= number


async def count_perceptual(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM images WHERE embedding_model = 'perceptual'")
        )
    return int(count or 0)
