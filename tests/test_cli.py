"""`python -m app import`, `search` and `serve` against a running app on a free port."""

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
from pathlib import Path

import httpx
import psutil

from app import cli
from app.models.api_key import SCOPES
from bench.harness import free_port, wait_for_listeners
from tests.support.app import DatabaseFactory, make_settings, settings_on_new_database
from tests.support.cli import ROOT, run_cli, run_with_a_terminal_as_stderr, server_environment
from tests.support.images import encode, scene, text_page
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
    (stored / "letter.jpg").write_bytes(encode(text_page(1), "JPEG", quality=90))  # unrelated
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
    # A verified copy is listed whatever the threshold; anything else must reach it.
    assert strict.splitlines()[1:] == lines[1:]
    assert lenient.splitlines()[1] == lines[1]
    assert lenient.splitlines()[2].endswith("letter.jpg")
    assert lenient.splitlines()[-1] == "2 similar image(s)"
    assert (missing_code, message.strip()) == (1, f"error: {tmp_path / 'nope.jpg'} is not a file")


async def test_help_loads_none_of_the_heavy_libraries() -> None:
    code, imports = await run_cli(["--help"], {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in imports.splitlines() if "|" in line}
    assert code == 0
    assert "app.cli" in imported  # the import log is what was read
    assert imported.isdisjoint({"numpy", "PIL", "sqlalchemy", "uvicorn", "fastapi"})


async def test_every_command_has_help() -> None:
    commands = ("serve", "reembed", "reindex", "check", "import", "search", "duplicates", "keys")
    for command in commands:
        code, text = await run_cli([command, "--help"], dict(os.environ), stream="stdout")
        assert code == 0 and "usage: python -m app" in text


async def test_serve_with_several_workers_shares_one_database(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    _, url = await settings_on_new_database(create_database, tmp_path, "cli_workers")
    environment, port = server_environment(
        url.render_as_string(hide_password=False),
        tmp_path,
        WORKERS="2",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
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
    assert len(output.splitlines()) == 4, output
    building, building_regions, built, summary = output.splitlines()
    assert building == "building vector index: hnsw storage=vector m=16 ef_construction=128"
    assert building_regions == (
        "building region vector index: hnsw storage=vector m=16 ef_construction=128"
    )
    assert built == "vector index built: hnsw storage=vector m=16 ef_construction=128"
    assert summary.startswith("reindex: built hnsw storage=vector m=16 ef_construction=128 in ")


async def test_keys_made_by_the_command_line_work_on_every_running_replica_until_revoked(
    tmp_path: Path,
) -> None:
    # Two servers on one embedded database (as two replicas on one PostgreSQL); the key
    # commands open that database from processes of their own, while the servers run.
    settings = make_settings(tmp_path, AUTH_REQUIRED=True, API_KEY_CACHE_SECONDS=0)
    environment = {**os.environ, "DATA_DIR": str(tmp_path / "data")}
    environment.pop("DATABASE_URL", None)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode(scene(seed=1), "JPEG"))

    with live_server(settings) as first, live_server(settings) as second:
        created_code, created = await run_cli(
            ["keys", "create", "--name", "pipeline", "--scope", "write"], environment, "stdout"
        )
        key = created.splitlines()[-1]
        async with (
            httpx.AsyncClient(base_url=first, headers={"X-API-Key": key}) as one,
            httpx.AsyncClient(base_url=second, headers={"Authorization": f"Bearer {key}"}) as two,
        ):
            anonymous_code, anonymous = await run_cli(
                ["import", str(photos), "--url", first], environment, "stdout"
            )
            imported_code, imported = await run_cli(
                ["import", str(photos), "--url", first],
                {**environment, "IMAGE_SERVICE_API_KEY": key},
                "stdout",
            )
            searched_code, searched = await run_cli(
                ["search", str(photos / "a.jpg"), "--url", second, "--api-key", key],
                environment,
                "stdout",
            )
            listed_on_second = (await two.get("/api/v1/images/")).json()
            _, listed = await run_cli(["keys", "list"], environment, "stdout")
            revoked_code, revoked = await run_cli(
                ["keys", "revoke", "pipeline"], environment, "stdout"
            )
            after = [await one.get("/api/v1/images/"), await two.get("/api/v1/images/")]
            _, listed_all = await run_cli(["keys", "list", "--all"], environment, "stdout")

    assert created_code == 0 and re.fullmatch(r"isk_[A-Za-z0-9_-]{43}", key)
    assert "created key 'pipeline': scope write" in created
    assert anonymous_code == 1 and "This request needs an API key" in anonymous
    assert imported_code == 0 and "import: 1 stored" in imported
    assert searched_code == 0 and re.search(r"1\.000  exact .* a\.jpg", searched)
    assert listed_on_second["total"] == 1
    assert re.search(r"^pipeline\s+write\s+unlimited\s", listed, re.MULTILINE)
    assert listed.splitlines()[-1] == "1 key(s)"
    assert key not in listed + listed_all
    assert hashlib.sha256(key.encode()).hexdigest() not in listed + listed_all
    assert revoked_code == 0 and "revoked key 'pipeline'" in revoked
    assert [answer.status_code for answer in after] == [401, 401]
    assert [answer.json()["code"] for answer in after] == ["invalid_api_key"] * 2
    assert listed_all.splitlines()[-1] == "1 key(s)"  # revoked keys only with --all


async def test_key_names_are_unique_among_active_keys(tmp_path: Path) -> None:
    environment = {**os.environ, "DATA_DIR": str(tmp_path / "data")}
    environment.pop("DATABASE_URL", None)
    create = ["keys", "create", "--name", "viewer", "--scope", "read", "--rate", "2.5"]

    first_code, first = await run_cli(create, environment, "stdout")
    taken_code, taken = await run_cli(create, environment)
    bad_code, bad = await run_cli(
        ["keys", "create", "--name", "no spaces", "--scope", "read"], environment
    )
    _, revoked = await run_cli(["keys", "revoke", "viewer"], environment, "stdout")
    again_code, _ = await run_cli(create, environment, "stdout")
    missing_code, missing = await run_cli(["keys", "revoke", "nobody"], environment)

    assert first_code == 0 and "rate 2.5/s burst 2" in first
    assert taken_code == 1 and "an active key is already named 'viewer'" in taken
    assert bad_code == 1 and "a key name is 1 to 64 letters" in bad
    assert "revoked key 'viewer'" in revoked
    assert again_code == 0  # the name is free once its key is revoked
    assert missing_code == 1 and "no active key is named 'nobody'" in missing


def test_the_command_line_offers_the_scopes_keys_have() -> None:
    # The parser keeps its own copy, so that `--help` does not import SQLAlchemy.
    assert cli.SCOPES == SCOPES
