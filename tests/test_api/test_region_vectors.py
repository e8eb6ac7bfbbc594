"""Region vectors (REGION_VECTORS): each stored picture is also embedded by its quadrants and
its centre, so a search finds a picture that shows the query in part of its frame; they are
written and removed with the image, filled in by `reembed`, and can be turned off."""

from pathlib import Path
from typing import Any

from httpx import AsyncClient
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.database import create_engine
from app.core.resources import create_embedder, create_store
from app.imaging.embeddings import REGION_BOXES
from app.models.image import image_regions
from app.services.reembed import ReembedProgress, reembed_images
from app.services.search import REGION_SCORE_PENALTY
from tests.support.app import DatabaseFactory, MakeClient, app_client, settings_on_new_database
from tests.support.database import region_models, region_scores, row_count
from tests.support.http import upload
from tests.support.images import collage_of, encode, scene, screenshot_of


async def stored(client: AsyncClient, image: Image.Image) -> str:
    response = await upload(client, encode(image, "JPEG"))
    assert response.status_code == 201, response.text
    image_id: str = response.json()["id"]
    return image_id


async def similar(client: AsyncClient, image_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/images/{image_id}/similar?threshold=-1")
    assert response.status_code == 200, response.text
    return {match["id"]: match for match in response.json()["similar_images"]}


async def test_a_collage_tile_is_found_by_its_region_and_verified(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    original = scene(640, 480, seed=1)
    query = await stored(client, original)
    others = [scene(640, 480, seed=seed) for seed in (7, 8, 9)]
    collage = await stored(client, collage_of([*others, original]))  # the last quadrant

    match = (await similar(client, query))[collage]
    whole, part, region = await region_scores(connection, query, collage)

    assert region == 3  # the bottom-right quadrant
    # Its best score is by the region, which counts REGION_SCORE_PENALTY less.
    assert part - REGION_SCORE_PENALTY > whole
    assert abs(match["similarity_score"] - (part - REGION_SCORE_PENALTY)) < 1e-5
    assert match["match"] == "near_duplicate"
    assert match["evidence"]["transform"] == "similarity"


async def test_a_screenshot_is_found_by_its_centre_and_verified(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    original = scene(640, 480, seed=1)
    query = await stored(client, original)
    screenshot = await stored(client, screenshot_of(original))

    match = (await similar(client, query))[screenshot]
    whole, part, region = await region_scores(connection, query, screenshot)

    assert part - REGION_SCORE_PENALTY > whole
    assert abs(match["similarity_score"] - (part - REGION_SCORE_PENALTY)) < 1e-5
    assert region in range(len(REGION_BOXES))
    assert match["match"] == "near_duplicate"


async def test_an_upload_stores_its_regions_and_a_delete_removes_them(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    image_id = await stored(client, scene(640, 480, seed=1))
    written = await region_models(connection, image_id)

    response = await client.delete(f"/api/v1/images/{image_id}")

    assert written == ["cnn"] * len(REGION_BOXES)
    assert response.status_code == 204
    assert await region_models(connection, image_id) == []


async def test_an_upload_that_fails_after_writing_its_regions_leaves_nothing(
    make_client: MakeClient, connection: AsyncConnection
) -> None:
    # The database refuses the transaction once the regions are written: the row, the regions
    # and the stored file must all go.
    await connection.execute(
        text(
            "CREATE FUNCTION refuse_regions() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
    )
    await connection.execute(
        text(
            "CREATE TRIGGER refuse_regions AFTER INSERT ON image_regions "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse_regions()"
        )
    )
    async with make_client() as client:
        response = await upload(client, encode(scene(640, 480, seed=1), "JPEG"))
        listed = (await client.get("/api/v1/images")).json()

    assert response.status_code == 500
    assert await row_count(connection) == 0
    assert await connection.scalar(select(func.count()).select_from(image_regions)) == 0
    assert listed["total"] == 0


async def test_with_regions_off_uploads_store_none_and_scores_are_global(
    make_client: MakeClient, connection: AsyncConnection
) -> None:
    original = scene(640, 480, seed=1)
    async with make_client(REGION_VECTORS=False) as client:
        query = await stored(client, original)
        screenshot = await stored(client, screenshot_of(original))
        match = (await similar(client, query))[screenshot]
    async with make_client() as client:
        with_regions = (await similar(client, query))[screenshot]

    assert await region_models(connection, query) == []
    assert await region_models(connection, screenshot) == []
    # Today's search: the score is the global vectors' cosine, with or without the setting
    # (no region vectors were stored to find it by).
    assert abs(match["similarity_score"] - with_regions["similarity_score"]) < 1e-6
    assert match["match"] == with_regions["match"] == "near_duplicate"


async def test_reembed_fills_in_the_regions_of_images_stored_without_them(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(create_database, tmp_path, "regions_reembed")
    without = settings.model_copy(update={"REGION_VECTORS": False})
    async with app_client(without) as client:
        ids = [await stored(client, scene(320, 240, seed=seed)) for seed in (1, 2)]
    engine = create_engine(url)
    store, embedder = await create_store(settings), create_embedder(settings)

    async def fill() -> ReembedProgress:
        return await reembed_images(
            engine,
            store=store,
            embedder=embedder,
            max_pixels=settings.MAX_IMAGE_PIXELS,
            local_features=True,
            regions=True,
        )

    try:
        first, again = await fill(), await fill()
        async with engine.connect() as connection:
            models = [await region_models(connection, image_id) for image_id in ids]
    finally:
        await engine.dispose()

    assert (first.total, first.updated, first.failed) == (2, 2, 0)
    assert again.total == 0  # nothing left to fill in
    assert models == [["cnn"] * len(REGION_BOXES)] * 2
