"""Start-up: schema on an empty database, the dimension check, and embedded mode end to end."""

import logging
import re
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.core.database import INIT_SQL_PATH, Database, apply_schema, create_engine
from app.errors import SchemaMismatch
from app.models.api_key import api_keys
from app.models.image import ImageRow, image_regions, images
from bench.corpus import clustered_vectors, copy_vectors
from tests.support.app import DatabaseFactory, app_client, make_settings, settings_on_new_database
from tests.support.images import jpeg_bytes


def test_init_sql_vector_dimension_matches_the_configured_default() -> None:
    dimensions = re.findall(r"VECTOR\((\d+)\)", INIT_SQL_PATH.read_text(), flags=re.IGNORECASE)
    # The images' vectors and their region vectors.
    assert dimensions == [str(Settings.model_fields["EMBEDDING_DIMENSION"].default)] * 2


async def test_startup_creates_the_schema_on_an_empty_database_and_is_idempotent(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    # The smallest pool the settings allow must be enough to start.
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "startup_empty", DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0
    )

    for _ in range(2):  # a second start on the now-initialised database changes nothing
        async with app_client(settings) as client:
            assert (await client.get("/api/v1/images/")).json()["total"] == 0

    engine = create_engine(url)
    async with engine.connect() as connection:
        indexes = set(
            await connection.scalars(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'images'")
            )
        )
    await engine.dispose()
    assert {"images_pkey", "images_content_hash_key", "images_embedding_vector_idx"} <= indexes


async def test_startup_refuses_a_dimension_that_differs_from_the_schema(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    url = await create_database("startup_dimension")
    settings = make_settings(
        tmp_path, DATABASE_URL=url.render_as_string(hide_password=False), EMBEDDING_DIMENSION=256
    )

    with pytest.raises(SchemaMismatch, match="EMBEDDING_DIMENSION is 256"):
        async with app_client(settings):
            pass


async def test_start_up_checks_are_not_bound_by_the_request_statement_timeout(
    tmp_path: Path, create_database: DatabaseFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A timeout no statement meets stands for counts over a table of a million images, which
    # take seconds on a cold cache: the checks must still run and say what they found.
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "startup_checks", DB_STATEMENT_TIMEOUT=0.001
    )
    engine = create_engine(url, statement_timeout=None)
    await apply_schema(engine, embedding_dimension=settings.EMBEDDING_DIMENSION)
    await engine.dispose()
    vectors = clustered_vectors(2, dimension=settings.EMBEDDING_DIMENSION, clusters=1)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    await copy_vectors(dsn, vectors, model="an-earlier-model")

    with caplog.at_level(logging.WARNING, logger="app"):
        async with app_client(settings):
            pass

    assert "2 stored images were embedded with another model" in caplog.text
    assert "start-up checks skipped" not in caplog.text


def postgres_processes_for(pgdata: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(
            process.info["cmdline"] or []
        ):
            found.append(process)
    return found


async def test_embedded_mode_starts_postgres_keeps_data_and_stops_cleanly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # no DATABASE_URL: embedded PostgreSQL under DATA_DIR
    pgdata = settings.embedded_pgdata_dir

    async with app_client(settings) as client:
        upload = await client.post(
            "/api/v1/images/upload", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}
        )
        image_id = upload.json()["id"]
    assert postgres_processes_for(pgdata) == []
    assert not (pgdata / "postmaster.pid").exists()

    async with app_client(settings) as client:
        response = await client.get(f"/api/v1/images/{image_id}")
        detailed = (await client.get("/api/v1/health/detailed")).json()
    assert response.status_code == 200
    assert detailed["database"]["mode"] == "embedded"
    assert postgres_processes_for(pgdata) == []


def test_the_row_type_names_every_column_of_the_table() -> None:
    assert list(ImageRow.__annotations__) == [column.name for column in images.columns]


async def test_the_table_definition_matches_init_sql(database: Database) -> None:
    async with database.engine.connect() as connection:
        columns = (
            await connection.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'images' ORDER BY ordinal_position"
                )
            )
        ).scalars()
        assert list(columns) == [column.name for column in images.columns]


async def test_the_regions_table_definition_matches_init_sql(database: Database) -> None:
    async with database.engine.connect() as connection:
        columns = (
            await connection.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'image_regions' ORDER BY ordinal_position"
                )
            )
        ).scalars()
        assert list(columns) == [column.name for column in image_regions.columns]


async def test_the_api_keys_table_matches_init_sql(database: Database) -> None:
    async with database.engine.connect() as connection:
        columns = (
            await connection.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'api_keys' ORDER BY ordinal_position"
                )
            )
        ).scalars()
        assert list(columns) == [column.name for column in api_keys.columns]
