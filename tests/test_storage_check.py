"""The start-up sweep and `python -m app check [--repair]`."""

import asyncio
import os
from pathlib import Path

from app.cli.admin import check_summary
from app.core.database import create_engine
from app.core.local_store import LocalImageStore
from app.core.storage import image_key
from app.services.consistency import StorageReport
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

    store = LocalImageStore(settings.image_dir)
    files = sorted(p for p in settings.image_dir.rglob("*") if p.is_file())
    # A row whose file vanished, a file whose row vanished, and a staging leftover.
    engine = create_engine(url)
    async with engine.connect() as connection:
        row = await image_row(connection, lost["id"])
        assert row is not None and row.file_path is not None
        store.path(row.file_path).unlink()
        orphan = store.path(image_key("ab" * 32, ".jpg"))
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
    assert f"file without a row: ab/ab/{'ab' * 32}.jpg" in report
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


def test_the_check_summary_counts_thumbnails_without_a_row_only_when_there_are_some() -> None:
    thumbnails = StorageReport(orphan_thumbnails=["ab/ab/x-64.jpeg", "ab/ab/x-256.webp"])

    assert check_summary(thumbnails, repaired=False) == (
        "no staging leftovers, no files without a row, 2 thumbnails without a row, "
        "no rows without a file "
        "(`check --repair` removes the leftovers and the files without a row)"
    )
    assert check_summary(thumbnails, repaired=True) == (
        "removed no staging leftovers, no files without a row and 2 thumbnails without a row; "
        "no rows without a file"
    )
    assert check_summary(StorageReport(), repaired=False) == (
        "no staging leftovers, no files without a row, no rows without a file"
    )


async def test_the_sweep_at_start_up_removes_old_leftovers_but_not_fresh_files(
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
        # The sweep runs in the background: readiness does not wait for a bucket's listing.
        for _ in range(100):
            if not old.exists():
                break
            await asyncio.sleep(0.1)

    assert not old.exists()
    assert fresh.exists()  # may belong to an upload in flight in another worker


async def test_the_sweep_runs_again_every_interval(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(
        create_database,
        tmp_path,
        "storage_sweep_interval",
        STORAGE_SWEEP_INTERVAL_SECONDS=0.2,
        STORAGE_GRACE_SECONDS=0,
    )
    orphan = LocalImageStore(settings.image_dir).path(image_key("cd" * 32, ".png"))

    async with app_client(settings) as client:
        # Left after start-up, as a replica killed mid-upload would leave it.
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"orphan")
        for _ in range(100):
            if not orphan.exists():
                break
            await asyncio.sleep(0.1)
        healthy = await client.get("/api/v1/health/ready")

    assert not orphan.exists()
    assert healthy.status_code == 200
