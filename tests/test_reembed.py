"""Changing EMBEDDING_MODEL: detected at start-up, explained, and fixed by `reembed`."""

import logging
import os
from pathlib import Path

import pytest

from tests.support.app import DatabaseFactory, app_client, make_settings
from tests.support.cli import run_cli
from tests.support.http import upload
from tests.support.images import encode, scene


async def test_model_change_is_detected_and_reembed_brings_images_back(
    tmp_path: Path, create_database: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = (await create_database("reembed")).render_as_string(hide_password=False)
    original = scene(640, 480, seed=1)
    copies = [
        encode(original, "JPEG", quality=90),
        encode(original.resize((320, 240)), "JPEG", quality=50),
        encode(scene(640, 480, seed=2), "PNG"),
    ]

    # A collection made by an earlier release: its default model was `perceptual`, and it
    # stored no local features.
    old_settings = make_settings(
        tmp_path, DATABASE_URL=url, EMBEDDING_MODEL="perceptual", VERIFY_NEAR_DUPLICATES=False
    )
    async with app_client(old_settings) as client:
        ids = [
            (await client.post("/api/v1/images/upload", files={"file": ("x", data)})).json()["id"]
            for data in copies
        ]

    settings = make_settings(tmp_path, DATABASE_URL=url)  # today's default: cnn
    with caplog.at_level(logging.WARNING, logger="app"):
        async with app_client(settings) as client:
            assert "3 stored images were embedded with another model" in caplog.text
            assert "have no local features" not in caplog.text  # stale already says it
            detailed = (await client.get("/api/v1/health/detailed")).json()
            assert detailed["embedding"]["stored_models"] == {"perceptual": 3}
            assert detailed["embedding"]["stale_images"] == 3
            outdated = await client.get(f"/api/v1/images/{ids[0]}/similar")
            assert outdated.status_code == 409
            assert outdated.json()["code"] == "embedding_outdated"

            # The command line, while this app keeps serving on the same database.
            environment = {
                **os.environ,
                "DATABASE_URL": url,
                "DATA_DIR": str(settings.DATA_DIR),
                "MODEL_DIR": str(settings.model_dir),
            }
            environment.pop("EMBEDDING_MODEL", None)
            returncode, output = await run_cli(["reembed", "--batch-size", "2"], environment)
            assert returncode == 0, output
            assert "3 updated, 0 failed" in output

            detailed = (await client.get("/api/v1/health/detailed")).json()
            similar = (await client.get(f"/api/v1/images/{ids[0]}/similar")).json()
            record = (await client.get(f"/api/v1/images/{ids[0]}")).json()

    assert detailed["embedding"]["stored_models"] == {"cnn": 3}
    assert detailed["embedding"]["stale_images"] == 0
    # The resized copy, verified with the local features reembed computed.
    first = similar["similar_images"][0]
    assert (first["id"], first["match"]) == (ids[1], "near_duplicate")
    assert first["evidence"]["transform"] == "similarity"
    assert record["metadata"]["embedding"] == {"model": "cnn", "dimension": 512}

    # Running it again finds nothing to do.
    returncode, output = await run_cli(["reembed"], environment)
    assert returncode == 0
    assert "0 updated, 0 failed" in output


async def test_images_stored_without_local_features_get_them_from_reembed(
    tmp_path: Path, create_database: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = (await create_database("reembed_features")).render_as_string(hide_password=False)
    original = scene(640, 480, seed=1)
    unverified = make_settings(tmp_path, DATABASE_URL=url, VERIFY_NEAR_DUPLICATES=False)
    async with app_client(unverified) as client:
        query = (await upload(client, encode(original, "JPEG"))).json()["id"]
        copy = (await upload(client, encode(original.crop((0, 0, 500, 400)), "JPEG"))).json()["id"]

    settings = make_settings(tmp_path, DATABASE_URL=url)
    with caplog.at_level(logging.WARNING, logger="app"):
        async with app_client(settings):
            assert "2 stored images have no local features" in caplog.text
    environment = {
        **os.environ,
        "DATABASE_URL": url,
        "DATA_DIR": str(settings.DATA_DIR),
        "MODEL_DIR": str(settings.model_dir),
    }
    returncode, output = await run_cli(["reembed"], environment)
    async with app_client(settings) as client:
        match = (await client.get(f"/api/v1/images/{query}/similar")).json()["similar_images"][0]

    assert returncode == 0, output
    assert "2 updated, 0 failed" in output
    assert (match["id"], match["match"]) == (copy, "near_duplicate")
    assert match["evidence"]["inliers"] >= 15
