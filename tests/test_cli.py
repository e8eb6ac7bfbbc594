"""`python -m app import`, `search` and `serve` against a running app on a free port."""

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import httpx
import psutil

from bench.harness import free_port, wait_for_listeners
from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.cli import ROOT, run_cli, run_with_a_terminal_as_stderr
from tests.support.images import encode, scene
from tests.support.live_server import live_server, wait_until_ready


async def test_import_uploads_a_folder_reports_rejects_and_is_safe_to_rerun(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "cli_import")
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(encode(scene(seed=1), "JPEG"))
    (photos / "b.png").write_bytes(encode(scene(seed=2), "PNG"))
    (photos / "nested" / "c.jpg").write_bytes(encode(scene(seed=3), "JPEG"))
    (photos / "notes.txt").write_text("not a picture")
    (photos / "broken.jpg").write_bytes(encode(scene(seed=4), "JPEG")[:300])

    with live_server(settings) as base_url:
        environment = dict(os.environ)
        first_code, first = await run_cli(
            ["import", str(photos), "--url", base_url, "--concurrency", "3"],
            environment,
            stream="stdout",
        )
        again_code, again = await run_cli(
            ["import", str(photos), "--url", base_url, "--recursive"], environment, stream="stdout"
        )
        _, redirected = await run_cli(
            ["import", str(photos / "nested"), "--url", base_url], environment
        )

    assert first_code == 1  # broken.jpg was refused
    assert first.splitlines() == [
        "import: 2 stored, 0 already stored, 1 rejected, 1 skipped (not images)",
        f"rejected: {photos / 'broken.jpg'}: "
        "The file is not a valid JPEG image (corrupt or truncated)",
        f"skipped: {photos / 'notes.txt'}",
    ]
    assert again_code == 1
    assert "import: 1 stored, 2 already stored, 1 rejected, 1 skipped" in again
    assert redirected == ""  # no progress bar redraws in a redirected stderr


async def test_import_draws_a_progress_bar_on_a_terminal(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "cli_progress")
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        (photos / f"{seed}.jpg").write_bytes(encode(scene(seed=seed), "JPEG"))

    with live_server(settings) as base_url:
        code, terminal = await run_with_a_terminal_as_stderr(
            [sys.executable, "-m", "app", "import", str(photos), "--url", base_url]
        )

    assert code == 0
    bar = terminal.rstrip().split("\r")[-1]  # the last redraw
    assert bar.startswith("import: 100%") and "3/3" in bar and "0 failed" in bar
    assert "image/s" in terminal  # the rate


async def test_import_and_search_with_the_service_down_stop_at_once_and_say_why(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(5):
        (photos / f"{seed}.jpg").write_bytes(encode(scene(seed=seed), "JPEG"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    environment = dict(os.environ)
    expected = (
        f"error: no service answers at {url}; start it with `make run` "
        "(or `python -m app serve`), or give its address with --url"
    )

    import_code, import_message = await run_cli(["import", str(photos), "--url", url], environment)
    _, import_output = await run_cli(
        ["import", str(photos), "--url", url], environment, stream="stdout"
    )
    search_code, search_message = await run_cli(
        ["search", str(photos / "0.jpg"), "--url", url], environment
    )

    assert import_code == search_code == 1
    assert import_message.splitlines() == [expected]  # one message, not a rejection per file
    assert import_output == ""
    assert search_message.splitlines() == [expected]


async def test_search_prints_the_most_similar_images_as_a_table(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "cli_search")
    original = scene(640, 480, seed=1)
    stored = tmp_path / "stored"
    stored.mkdir()
    (stored / "holiday.jpg").write_bytes(encode(original, "JPEG", quality=90))
    query = tmp_path / "query.jpg"
    query.write_bytes(encode(original.resize((320, 240)), "JPEG", quality=50))

    with live_server(settings) as base_url:
        environment = dict(os.environ)
        await run_cli(["import", str(stored), "--url", base_url], environment)
        code, table = await run_cli(
            ["search", str(query), "--url", base_url, "--limit", "3"], environment, stream="stdout"
        )
        _, strict = await run_cli(
            ["search", str(query), "--url", base_url, "--threshold", "0.9999"],
            environment,
            stream="stdout",
        )
        _, lenient = await run_cli(
            ["search", str(query), "--url", base_url, "--threshold", "-1"],
            environment,
            stream="stdout",
        )
        missing_code, message = await run_cli(
            ["search", str(tmp_path / "nope.jpg"), "--url", base_url], environment
        )

    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == ["score", "match", "id", "filename"]
    assert "near_duplicate" in lines[1] and lines[1].endswith("holiday.jpg")
    assert lines[-1] == "1 similar image(s)"
    score = float(lines[1].split()[0])
    assert 0.9 < score < 0.9999
    assert strict.splitlines()[-1] == "0 similar image(s)"
    assert lenient.splitlines()[1:] == lines[1:]
    assert missing_code == 1 and "nope.jpg" in message


async def test_help_loads_none_of_the_heavy_libraries() -> None:
    code, imports = await run_cli(["--help"], {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in imports.splitlines() if "|" in line}
    assert code == 0
    assert "app.cli" in imported  # the import log is what was read
    assert imported.isdisjoint({"numpy", "PIL", "sqlalchemy", "uvicorn", "fastapi"})


async def test_every_command_has_help() -> None:
    for command in ("serve", "reembed", "reindex", "check", "import", "search"):
        code, text = await run_cli([command, "--help"], dict(os.environ), stream="stdout")
        assert code == 0 and "usage: python -m app" in text


async def test_serve_with_several_workers_shares_one_database(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    _, url = await settings_on_new_database(create_database, tmp_path, "cli_workers")
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "WORKERS": "2",
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "serve",
        cwd=ROOT,
        env=environment,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            ready = await wait_until_ready(client)
            workers = [
                child
                for child in psutil.Process(server.pid).children()
                if "spawn_main" in " ".join(child.cmdline())
            ]
            await wait_for_listeners(server.pid, port, 2)
            uploads = await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/images/upload",
                        files={"file": (f"{n}.jpg", encode(scene(seed=n), "JPEG"))},
                    )
                    for n in range(6)
                )
            )
            listing = (await client.get("/api/v1/images/")).json()
        # A client's keep-alive connections are spread over the workers, not all on one.
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
        for reader, writer in connections:
            writer.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
        served_by = [
            sum(1 for c in worker.net_connections() if c.laddr and c.laddr[1] == port)
            for worker in workers
        ]
        for _, writer in connections:
            writer.close()
    finally:
        server.terminate()
        assert server.stderr is not None
        log = (await server.stderr.read()).decode()
        await server.wait()

    assert ready
    assert len(workers) == 2
    assert [response.status_code for response in uploads] == [201] * 6
    assert listing["total"] == 6
    assert all(count > 0 for count in served_by), served_by
    # The workers log as configured (JSON lines, one per request).
    access = [json.loads(line) for line in log.splitlines() if '"logger": "app.access"' in line]
    assert sum(entry["route"] == "/api/v1/images/upload" for entry in access) == 6


async def test_several_workers_need_a_database_of_their_own(tmp_path: Path) -> None:
    environment = {**os.environ, "WORKERS": "2", "DATA_DIR": str(tmp_path / "data")}
    environment.pop("DATABASE_URL", None)

    code, message = await run_cli(["serve"], environment)

    assert code == 1
    assert "WORKERS > 1 needs a PostgreSQL of its own (set DATABASE_URL)" in message


async def test_serve_on_a_busy_port_names_it_and_how_to_choose_another_before_starting(
    tmp_path: Path,
) -> None:
    environment = {**os.environ, "HOST": "127.0.0.1", "DATA_DIR": str(tmp_path / "data")}
    environment.pop("DATABASE_URL", None)
    with socket.socket() as busy:  # a first `make run`
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, message = await run_cli(["serve"], {**environment, "PORT": str(port)})

    assert code == 1
    assert message.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use (another server, or a "
        f"`make run` already running?). Choose another port with PORT, e.g. "
        f"`PORT={port + 1} make run`"
    ]
    assert not (tmp_path / "data" / "postgres").exists()  # the database was never started


async def test_reindex_reports_the_index_build_and_nothing_of_the_embedded_server(
    tmp_path: Path,
) -> None:
    environment = {**os.environ, "DATA_DIR": str(tmp_path / "data")}
    environment.pop("DATABASE_URL", None)

    code, output = await run_cli(["reindex"], environment)

    assert code == 0
    building, built, summary = output.splitlines()
    assert building == "building vector index: hnsw storage=vector m=16 ef_construction=64"
    assert built == "vector index built: hnsw storage=vector m=16 ef_construction=64"
    assert summary.startswith("reindex: built hnsw storage=vector m=16 ef_construction=64 in ")
