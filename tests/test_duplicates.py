"""Duplicate groups across transactions, processes and commands, on databases of their own:
concurrent uploads of copies, the command line (listing and rebuild), decisions that survive a
rebuild and a re-upload, and a stopped rebuild that continues."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import ImageEnhance

from app.core.database import create_engine
from app.core.resources import SearchDefaults
from app.services.duplicates import RebuildProgress, link_options, rebuild_groups
from bench.harness import free_port
from tests.support.app import DatabaseFactory, app_client, make_settings, settings_on_new_database
from tests.support.cli import ROOT, run_cli
from tests.support.http import upload
from tests.support.images import encode, scene
from tests.support.live_server import live_server

DUPLICATES = "/api/v1/duplicates"


def edited_copies(seed: int, count: int = 6) -> list[bytes]:
    """`count` different files of one picture (640 x 480): re-compressed, resized, brightened."""
    original = scene(640, 480, seed=seed)
    edits = [
        encode(original, "JPEG", quality=95),
        encode(original, "JPEG", quality=70),
        encode(original, "JPEG", quality=40),
        encode(original.resize((320, 240)), "JPEG", quality=80),
        encode(original.resize((480, 360)), "JPEG", quality=60),
        encode(ImageEnhance.Brightness(original).enhance(1.15), "JPEG", quality=85),
        encode(original, "PNG"),
    ]
    return edits[:count]


def member_sets(listing: dict[str, Any]) -> list[set[str]]:
    return [{member["id"] for member in group["members"]} for group in listing["items"]]


async def test_concurrent_uploads_of_copies_end_in_one_group_per_picture_and_the_cli_prints_them(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(
        create_database, tmp_path, "duplicates_concurrent", UPLOAD_QUEUE_LIMIT=64
    )
    files = [(seed, n, data) for seed in (1, 2, 3) for n, data in enumerate(edited_copies(seed))]
    files.sort(key=lambda file: (file[1], file[0]))  # the pictures' copies interleaved

    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            answers = await asyncio.gather(
                *(upload(client, data, f"{seed}-{n}.jpg") for seed, n, data in files)
            )
            listing = (await client.get(DUPLICATES)).json()
        environment = dict(os.environ)
        table_code, table = await run_cli(["duplicates", "--url", base_url], environment, "stdout")
        json_code, printed = await run_cli(
            ["duplicates", "--url", base_url, "--json"], environment, "stdout"
        )

    ids_by_picture: dict[int, set[str]] = {}
    for (seed, _, _), answer in zip(files, answers, strict=True):
        assert answer.status_code == 201, answer.text
        ids_by_picture.setdefault(seed, set()).add(answer.json()["id"])
    assert listing["total"] == 3
    assert sorted(member_sets(listing), key=sorted) == sorted(ids_by_picture.values(), key=sorted)

    assert table_code == 0
    lines = table.splitlines()
    assert lines[0].split() == [
        "group", "keep", "image", "pixels", "bytes", "best", "link", "filename",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:-1]]
    assert len(rows) == 18
    keepers = [row for row in rows if row[1] == "*"]
    assert len(keepers) == 3 and all(row[3] == "640x480" for row in keepers)
    assert lines[-1] == "3 duplicate group(s), 18 images; * the suggested keeper"
    assert json_code == 0
    assert json.loads(printed) == {
        "total": 3,
        "rebuild_needed": False,
        "groups": listing["items"],
    }


async def test_a_decision_survives_a_rebuild_and_a_reupload_and_group_ids_survive_the_rebuild(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "duplicates_rules")
    first, second = edited_copies(seed=4, count=3), edited_copies(seed=5, count=2)
    environment = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "DATA_DIR": str(settings.DATA_DIR),
    }

    async with app_client(settings) as client:
        kept = [(await upload(client, data, "a.jpg")).json()["id"] for data in first]
        marked = [(await upload(client, data, "b.jpg")).json()["id"] for data in second]
        before = (await client.get(DUPLICATES)).json()
        await client.post(f"{DUPLICATES}/not-duplicates", json={"pairs": [marked]})

        code, output = await run_cli(["duplicates", "--rebuild"], environment)
        rebuilt = (await client.get(DUPLICATES)).json()

        await client.delete(f"/api/v1/images/{marked[1]}")
        again = await upload(client, second[1], "b-again.jpg")
        after_reupload = (await client.get(DUPLICATES)).json()

    assert [group["size"] for group in before["items"]] == [3, 2]
    assert code == 0, output
    assert output.splitlines()[-1].startswith(
        "duplicates: build 2 (model cnn, near-duplicate threshold 0.70, verification of the 20 "
        "nearest): 5 images checked, 3 links, 1 group(s); 0 skipped (embedded with another "
        "model: run reembed first); "
    )
    assert rebuilt["rebuild_needed"] is False
    assert [group["id"] for group in rebuilt["items"]] == [before["items"][0]["id"]]
    assert member_sets(rebuilt) == [set(kept)]
    assert again.status_code == 201
    assert member_sets(after_reupload) == [set(kept)]


async def test_a_threshold_change_asks_for_a_rebuild_and_a_stopped_rebuild_continues(
    tmp_path: Path, create_database: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "duplicates_resume")
    async with app_client(settings) as client:
        for seed in (6, 7, 8):
            for data in edited_copies(seed, count=2):
                await upload(client, data, f"{seed}.jpg")
        before = (await client.get(DUPLICATES)).json()

    database_url = url.render_as_string(hide_password=False)
    stricter = make_settings(tmp_path, DATABASE_URL=database_url, NEAR_DUPLICATE_THRESHOLD=0.75)
    async with app_client(stricter) as client:
        outdated = (await client.get(DUPLICATES)).json()
    assert "duplicate groups are out of date" in caplog.text

    # A rebuild stopped after its first batch of two images (as Ctrl-C stops it) ...
    options = link_options(SearchDefaults.from_settings(stricter), stricter.EMBEDDING_MODEL)
    engine = create_engine(url)

    def stop(progress: RebuildProgress) -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            await rebuild_groups(engine, options, batch_size=2, on_progress=stop)
    finally:
        await engine.dispose()
    caplog.clear()
    async with app_client(stricter):
        pass
    stopped_warning = caplog.text
    # ... continues where it stopped.
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(settings.DATA_DIR),
        "NEAR_DUPLICATE_THRESHOLD": "0.75",
    }
    code, output = await run_cli(["duplicates", "--rebuild", "--batch-size", "2"], environment)
    async with app_client(stricter) as client:
        rebuilt = (await client.get(DUPLICATES)).json()

    assert before["total"] == 3 and before["rebuild_needed"] is False
    assert outdated["rebuild_needed"] is True
    assert (
        "duplicate groups are out of date (a rebuild with model cnn, near-duplicate threshold "
        "0.75, verification of the 20 nearest was stopped before it finished)" in stopped_warning
    )
    assert code == 0, output
    assert output.splitlines()[-1].startswith(
        "duplicates: build 2 (model cnn, near-duplicate threshold 0.75, verification of the 20 "
        "nearest), continuing a stopped rebuild (2 done before): 4 images checked, 3 links, "
        "3 group(s);"
    )
    assert rebuilt["rebuild_needed"] is False
    assert member_sets(rebuilt) == member_sets(before)
    assert [g["id"] for g in rebuilt["items"]] == [g["id"] for g in before["items"]]


async def test_turning_verification_off_or_changing_its_candidates_asks_for_a_rebuild(
    tmp_path: Path, create_database: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "duplicates_verification"
    )
    async with app_client(settings) as client:
        for data in edited_copies(seed=9, count=3):
            await upload(client, data, "9.jpg")
        verified = (await client.get(DUPLICATES)).json()

    database_url = url.render_as_string(hide_password=False)
    unverified = make_settings(tmp_path, DATABASE_URL=database_url, VERIFY_NEAR_DUPLICATES=False)
    fewer = make_settings(tmp_path, DATABASE_URL=database_url, VERIFICATION_CANDIDATES=5)
    async with app_client(unverified) as client:
        off_before_rebuild = (await client.get(DUPLICATES)).json()
    async with app_client(fewer) as client:
        fewer_candidates = (await client.get(DUPLICATES)).json()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(settings.DATA_DIR),
        "VERIFY_NEAR_DUPLICATES": "false",
    }
    code, output = await run_cli(["duplicates", "--rebuild"], environment)
    async with app_client(unverified) as client:
        off_after_rebuild = (await client.get(DUPLICATES)).json()
    async with app_client(settings) as client:
        on_again = (await client.get(DUPLICATES)).json()

    assert verified["rebuild_needed"] is False and verified["total"] == 1
    assert off_before_rebuild["rebuild_needed"] is True
    assert fewer_candidates["rebuild_needed"] is True
    assert (
        "duplicate groups are out of date (built with model cnn, near-duplicate threshold "
        "0.70, verification of the 20 nearest; now model cnn, near-duplicate threshold 0.70, "
        "verification off)" in caplog.text
    )
    assert code == 0, output
    assert output.splitlines()[-1].startswith(
        "duplicates: build 2 (model cnn, near-duplicate threshold 0.70, verification off): "
        "3 images checked,"
    )
    assert off_after_rebuild["rebuild_needed"] is False
    assert on_again["rebuild_needed"] is True


async def test_the_cli_listing_with_no_service_stops_at_once_and_says_why() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    code, message = await run_cli(["duplicates", "--url", url], dict(os.environ))

    assert code == 1
    assert message.splitlines() == [
        f"error: no service answers at {url}; start it with `make run` "
        "(or `python -m app serve`), or give its address with --url"
    ]


async def test_the_cli_listing_piped_into_a_reader_that_went_away_stops_without_a_traceback(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "duplicates_pipe")
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -c 10` once it has read its 10 bytes

    with live_server(settings) as base_url:
        finished = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app", "duplicates", "--url", base_url, "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=dict(os.environ),
            timeout=120,
            check=False,
        )
    os.close(write_end)

    assert finished.returncode == 1
    assert finished.stderr == b""
