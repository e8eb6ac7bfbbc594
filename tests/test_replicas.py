"""Several replicas, as deployed: `python -m app serve` processes, each with a local folder of
its own, sharing one PostgreSQL and one bucket (a real S3 server, SeaweedFS)."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import URL, func, select, text

from app.core.database import create_engine, transaction
from app.models.image import images
from bench.harness import running_app
from bench.seaweedfs import S3Server
from tests.support.app import DatabaseFactory
from tests.support.cli import run_cli
from tests.support.http import assert_error
from tests.support.images import encode, scene
from tests.support.storage import bucket_keys, image_keys, thumbnail_keys

UPLOAD = "/api/v1/images/upload"


@dataclass
class Replicas:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    environment: dict[str, str]  # what both were started with
    url: URL
    prefix: str

    def keys(self, server: S3Server) -> list[str]:
        return bucket_keys(server, self.prefix)


@pytest.fixture(scope="module")
async def replicas(
    create_database: DatabaseFactory, s3_server: S3Server
) -> AsyncIterator[Replicas]:
    url = await create_database("replicas")
    prefix = "replicas"
    environment = {
        **s3_server.environment(prefix),
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "WORKERS": "1",
    }
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):  # each in a temporary DATA_DIR of its own
            app = await stack.enter_async_context(running_app(environment))
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(base_url=app.url, timeout=30))
            )
        yield Replicas(clients[0], clients[1], environment, url, prefix)


def picture(seed: int, **options: int) -> bytes:
    return encode(scene(240, 180, seed=seed), "JPEG", quality=90, **options)


async def test_what_one_replica_stored_another_serves(
    replicas: Replicas, s3_server: S3Server
) -> None:
    original = picture(1)
    copy = encode(scene(240, 180, seed=1).resize((200, 150)), "JPEG", quality=70)
    stored = (await replicas.a.post(UPLOAD, files={"file": ("o.jpg", original)})).json()
    copied = (await replicas.a.post(UPLOAD, files={"file": ("c.jpg", copy)})).json()

    record = await replicas.b.get(f"/api/v1/images/{stored['id']}")
    similar = await replicas.b.get(f"/api/v1/images/{stored['id']}/similar")
    file = await replicas.b.get(f"/api/v1/images/{stored['id']}/file")
    thumbnails = await asyncio.gather(
        *(
            client.get(f"/api/v1/images/{stored['id']}/thumbnail?size=96")
            for client in (replicas.a, replicas.b) * 3
        )
    )

    assert record.status_code == 200
    assert record.json()["filename"] == "o.jpg"
    assert [match["id"] for match in similar.json()["similar_images"]] == [copied["id"]]
    assert file.content == original
    assert {response.status_code for response in thumbnails} == {200}
    assert len({response.content for response in thumbnails}) == 1
    # One thumbnail object, made once for both replicas.
    assert [key.rsplit("/", 1)[1] for key in thumbnail_keys(replicas.keys(s3_server))] == [
        "96.jpeg"
    ]


async def test_the_same_bytes_through_both_replicas_at_once_give_one_row_and_one_object(
    replicas: Replicas, s3_server: S3Server
) -> None:
    data = picture(2)
    responses = await asyncio.gather(
        *(
            client.post(UPLOAD, files={"file": (f"{n}.jpg", data)})
            for n, client in enumerate((replicas.a, replicas.b) * 4)
        )
    )

    assert sorted(response.status_code for response in responses) == [200] * 7 + [201]
    assert len({response.json()["id"] for response in responses}) == 1
    row = (await replicas.a.get(f"/api/v1/images/{responses[0].json()['id']}")).json()
    engine = create_engine(replicas.url)
    async with engine.connect() as connection:
        rows = await connection.scalar(
            select(func.count()).select_from(images).where(images.c.filename == row["filename"])
        )
        content_hash = await connection.scalar(
            select(images.c.content_hash).where(images.c.filename == row["filename"])
        )
    await engine.dispose()
    assert rows == 1
    assert isinstance(content_hash, str)
    assert len([k for k in image_keys(replicas.keys(s3_server)) if content_hash in k]) == 1


async def test_a_delete_through_one_replica_is_seen_by_the_other(
    replicas: Replicas, s3_server: S3Server
) -> None:
    image_id = (await replicas.a.post(UPLOAD, files={"file": ("d.jpg", picture(3))})).json()["id"]
    assert (await replicas.a.get(f"/api/v1/images/{image_id}/file")).status_code == 200
    keys_before = image_keys(replicas.keys(s3_server))

    assert (await replicas.b.delete(f"/api/v1/images/{image_id}")).status_code == 204

    assert_error(await replicas.a.get(f"/api/v1/images/{image_id}"), 404, "image_not_found")
    assert_error(await replicas.a.get(f"/api/v1/images/{image_id}/file"), 404, "image_not_found")
    assert len(image_keys(replicas.keys(s3_server))) == len(keys_before) - 1


async def test_a_replica_killed_mid_upload_leaves_no_orphan_after_the_sweep(
    replicas: Replicas, s3_server: S3Server
) -> None:
    data = picture(4)
    keys_before = set(image_keys(replicas.keys(s3_server)))
    engine = create_engine(replicas.url)
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(running_app(replicas.environment))
        victim = await stack.enter_async_context(httpx.AsyncClient(base_url=app.url, timeout=30))
        # Inserts wait behind this lock, so the upload stops between writing its object and
        # inserting its row: the moment the replica is killed.
        blocker = await stack.enter_async_context(engine.connect())
        async with transaction(blocker):
            await blocker.execute(text("LOCK TABLE images IN SHARE MODE"))
            upload = asyncio.create_task(victim.post(UPLOAD, files={"file": ("k.jpg", data)}))
            deadline = time.monotonic() + 30
            while not set(image_keys(replicas.keys(s3_server))) - keys_before:
                assert time.monotonic() < deadline, "the upload never wrote its object"
                await asyncio.sleep(0.05)
            os.kill(app.pid, signal.SIGKILL)
            with pytest.raises(httpx.TransportError):
                await upload
    await engine.dispose()
    orphans = set(image_keys(replicas.keys(s3_server))) - keys_before
    assert len(orphans) == 1  # the killed replica's object, without a row

    code, report = await run_cli(
        ["check", "--repair", "--min-age", "0"],
        {**os.environ, **replicas.environment},
        stream="stdout",
    )

    assert code == 0, report
    assert f"file without a row: {orphans.pop()}" in report
    assert set(image_keys(replicas.keys(s3_server))) == keys_before
