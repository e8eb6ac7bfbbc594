"""The start-up sweep and `python -m app check [--repair]`."""

import os
from pathlib import Path

from app.core.database import create_engine
from app.core.resources import create_store
from tests.support.app import DatabaseFactory, app_client, settings_on_new_database
from tests.support.cli import run_cli
from tests.support.database import image_row
from tests.support.images import jpeg_bytes


def age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


async def test_check_reports_and_repairs_orphans_and_missing_files(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "storage_check")
    async with app_client(settings) as client:
        kept, lost = [
            (await client.post("/api/v1/images/upload", files={"file": (name, data)})).json()
            for name, data in (("a.jpg", jpeg_bytes(seed=1)), ("b.jpg", jpeg_bytes(seed=2)))
        ]

    store = create_store(settings)
    files = sorted(p for p in settings.image_dir.rglob("*") if p.is_file())
    # A row whose file vanished, a file whose row vanished, and a staging leftover.
    engine = create_engine(url)
    async with engine.connect() as connection:
        row = await image_row(connection, lost["id"])
        assert row is not None and row.file_path is not None
        store.absolute_path(row.file_path).unlink()
        orphan = settings.image_dir / "ab" / "cd" / ("ab" * 32 + ".jpg")
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"orphan")
        leftover = store.staging_dir / "upload.part"
        leftover.write_bytes(b"half")
        for path in (orphan, leftover):
            age(path, 3600)
    await engine.dispose()

    environment = {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL.get_secret_value(),  # type: ignore[union-attr]
        "DATA_DIR": str(settings.DATA_DIR),
    }
    code, report = await run_cli(["check"], environment, stream="stdout")
    assert code == 1
    assert "file without a row: ab/cd/" in report
    assert "staging leftover: upload.part" in report
    assert f"row without a file: {lost['id']} (b.jpg)" in report
    summary = report.splitlines()[-1]
    assert summary == (
        "check: 1 staging leftover, 1 file without a row, 1 row without a file "
        "(`check --repair` removes the leftovers and the files without a row)"
    )

    code, report = await run_cli(["check", "--repair"], environment, stream="stdout")
    assert code == 1  # the row without its file is reported, never deleted
    assert report.splitlines()[-1] == (
        "check: removed 1 staging leftover and 1 file without a row; 1 row without a file"
    )
    assert not orphan.exists() and not leftover.exists()
    assert len([p for p in settings.image_dir.rglob("*") if p.is_file()]) == len(files) - 1
    assert kept["id"] not in report

    code, report = await run_cli(["check"], environment, stream="stdout")
    assert code == 1
    assert report.splitlines()[-1] == (
        "check: no staging leftovers, no files without a row, 1 row without a file"
    )


async def test_startup_sweep_removes_old_leftovers_but_not_fresh_files(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "storage_sweep")
    staging = settings.image_dir / ".staging"
    staging.mkdir(parents=True)
    old, fresh = staging / "old.part", staging / "fresh.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    age(old, 3600)

    async with app_client(settings):
        pass

    assert not old.exists()
    assert fresh.exists()  # may belong to an upload in flight in another worker
