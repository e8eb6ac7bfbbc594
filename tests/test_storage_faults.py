"""The object store stopped while uploads are in flight, then started again: uploads refused
meanwhile answer 503 with Retry-After and leave nothing behind; every 201 keeps its object."""

import asyncio
from pathlib import Path

import httpx
import pytest

from bench.seaweedfs import SeaweedUnavailable, seaweedfs_server, weed_binary
from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.images import encode, scene
from tests.support.live_server import live_server, wait_until_ready
from tests.support.storage import storage_state


async def test_uploads_survive_the_store_stopping_and_starting_again(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        pytest.skip(f"no S3 server: {exc}")
    pictures = [encode(scene(160, 120, seed=seed), "JPEG", quality=85) for seed in range(45)]
    accepted: dict[int, str] = {}
    refused: list[httpx.Response] = []
    refused_numbers: list[int] = []

    with seaweedfs_server(tmp_path / "seaweedfs") as seaweed:
        settings, url = await settings_on_new_database(
            create_database,
            tmp_path,
            "storage_faults",
            **seaweed.server.environment("faults"),
            S3_MAX_RETRIES=0,
            S3_TIMEOUT_SECONDS=2,
        )
        with live_server(settings) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                store_down = asyncio.Event()
                ready_while_down: list[httpx.Response] = []

                async def uploader(worker: int) -> None:
                    for number in range(worker, len(pictures), 3):
                        response = await client.post(
                            "/api/v1/images/upload",
                            files={"file": (f"{number}.jpg", pictures[number])},
                        )
                        if response.status_code == 201:
                            accepted[number] = response.json()["id"]
                        else:
                            refused.append(response)
                            refused_numbers.append(number)
                        await asyncio.sleep(0.03)

                async def outage() -> None:
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(seaweed.stop)  # uploads are in flight meanwhile
                    store_down.set()
                    ready_while_down.append(await client.get("/api/v1/health/ready"))
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(seaweed.start)

                await asyncio.gather(uploader(0), uploader(1), uploader(2), outage())
                ready_again = await wait_until_ready(client)
                retried = [
                    await client.post(
                        "/api/v1/images/upload", files={"file": ("r.jpg", pictures[number])}
                    )
                    for number in refused_numbers
                ]
                files = {
                    number: await client.get(f"/api/v1/images/{image_id}/file")
                    for number, image_id in accepted.items()
                }
        rows, orphans, missing = await storage_state(settings, url)

    assert refused, "no upload met the outage"
    assert {(r.status_code, r.json()["code"]) for r in refused} == {(503, "storage_unavailable")}
    assert {r.headers["retry-after"] for r in refused} == {"5"}
    assert ready_while_down[0].status_code == 503
    assert ready_while_down[0].json()["storage"] == "unavailable"
    assert ready_again
    assert {response.status_code for response in retried} <= {200, 201}
    assert all(files[number].content == pictures[number] for number in accepted)
    assert rows == len(pictures)  # each picture stored exactly once
    assert (orphans, missing) == ([], [])  # every row has its object, every object its row
