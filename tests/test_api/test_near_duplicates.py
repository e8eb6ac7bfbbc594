"""Two stages through the API: the vector index proposes, local features verify. A verified
copy is a near_duplicate with its evidence, whatever its score; a look-alike is `similar`."""

import uuid
from typing import Any

import pytest
from httpx import AsyncClient
from PIL import Image, ImageOps
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.imaging.verification import LocalFeatures
from app.models.image import images
from tests.support.app import MakeClient
from tests.support.database import image_row
from tests.support.http import upload
from tests.support.images import encode, scene, screenshot_of, text_page


async def stored(client: AsyncClient, image: Image.Image, image_format: str = "JPEG") -> str:
    response = await upload(client, encode(image, image_format))
    assert response.status_code == 201, response.text
    image_id: str = response.json()["id"]
    return image_id


async def similar(client: AsyncClient, image_id: str, query: str = "threshold=-1") -> Any:
    response = await client.get(f"/api/v1/images/{image_id}/similar?{query}")
    assert response.status_code == 200, response.text
    return response.json()["similar_images"]


async def test_copies_that_change_the_frame_are_verified_near_duplicates(
    client: AsyncClient,
) -> None:
    original = scene(640, 480, seed=1)
    query = await stored(client, original)
    copies = {
        await stored(client, original.transpose(Image.Transpose.ROTATE_90)): (90.0, False),
        await stored(client, original.crop((100, 120, 550, 460))): (0.0, False),
        await stored(client, screenshot_of(original)): (0.0, False),
        await stored(client, ImageOps.mirror(original).resize((400, 300))): (0.0, True),
    }
    unrelated = await stored(client, scene(640, 480, seed=4))

    matches = {match["id"]: match for match in await similar(client, query)}

    for copy, (rotation, mirrored) in copies.items():
        assert matches[copy]["match"] == "near_duplicate"
        evidence = matches[copy]["evidence"]
        assert evidence["transform"] == "similarity"
        assert evidence["mirrored"] is mirrored
        assert evidence["inliers"] >= 15
        assert abs((evidence["rotation"] - rotation + 180) % 360 - 180) < 3
    assert matches[unrelated]["match"] == "similar"
    assert matches[unrelated]["evidence"] is None
    # Verified copies come first, then the rest by score.
    assert list(matches)[: len(copies)] == sorted(
        copies, key=lambda copy: -matches[copy]["similarity_score"]
    )


async def test_a_verified_copy_is_listed_even_below_the_threshold(client: AsyncClient) -> None:
    original = scene(640, 480, seed=1)
    query = await stored(client, original)
    copy = await stored(client, screenshot_of(original))

    everything = {m["id"]: m for m in await similar(client, query)}
    strict = await similar(
        client, query, f"threshold={everything[copy]['similarity_score'] + 0.01}"
    )

    assert [m["id"] for m in strict] == [copy]
    assert strict[0]["match"] == "near_duplicate"


async def test_pictures_that_are_not_photographs_are_told_apart(client: AsyncClient) -> None:
    black = await stored(client, Image.new("RGB", (200, 200)), "PNG")
    white = await stored(client, Image.new("RGB", (200, 200), (255, 255, 255)), "PNG")
    black_copy = await stored(client, Image.new("RGB", (120, 80)), "JPEG")
    letter = await stored(client, text_page(1), "PNG")
    other_letter = await stored(client, text_page(2), "PNG")
    letter_copy = await stored(client, text_page(1).resize((450, 600)), "JPEG")

    black_matches = {m["id"]: m["match"] for m in await similar(client, black)}
    letter_matches = {m["id"]: m["match"] for m in await similar(client, letter)}

    assert black_matches[black_copy] == "near_duplicate"
    assert black_matches.get(white, "similar") == "similar"
    assert letter_matches[letter_copy] == "near_duplicate"
    assert letter_matches.get(other_letter, "similar") == "similar"


async def test_search_by_upload_verifies_its_matches(client: AsyncClient) -> None:
    original = scene(640, 480, seed=1)
    copy = await stored(client, original.transpose(Image.Transpose.ROTATE_180))

    response = await client.post(
        "/api/v1/images/search", files={"file": ("q.jpg", encode(original, "JPEG"))}
    )

    (match,) = [m for m in response.json()["similar_images"] if m["id"] == copy]
    assert match["match"] == "near_duplicate"
    assert abs(abs(match["evidence"]["rotation"]) - 180) < 3


async def test_local_features_are_stored_with_the_image(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    image_id = await stored(client, scene(640, 480, seed=1))

    row = await image_row(connection, image_id)

    assert row is not None
    features = LocalFeatures.from_bytes(row.local_features)
    assert (features.width, features.height, features.original_side) == (512, 384, 640)
    assert len(features.keypoints) == 512


async def test_with_verification_off_the_label_follows_the_score(
    make_client: MakeClient, connection: AsyncConnection
) -> None:
    original = scene(640, 480, seed=1)
    # Global vectors alone: a region vector would find the screenshot's picture (see
    # test_region_vectors.py).
    async with make_client(VERIFY_NEAR_DUPLICATES=False, REGION_VECTORS=False) as client:
        query = await stored(client, original)
        resized = await stored(client, original.resize((320, 240)))
        framed = await stored(client, screenshot_of(original))
        matches = {m["id"]: m for m in await similar(client, query)}

    row = await image_row(connection, query)
    assert row is not None and row.local_features is None
    assert matches[resized]["match"] == "near_duplicate"  # 0.94 >= 0.7
    assert matches[resized]["evidence"] is None
    # A copy in a screenshot scores below NEAR_DUPLICATE_THRESHOLD: only verification finds it.
    assert matches[framed]["similarity_score"] < 0.7
    assert matches[framed]["match"] == "similar"


@pytest.mark.parametrize("candidates", [1, 2])
async def test_verification_candidates_bounds_what_is_verified(
    make_client: MakeClient, candidates: int
) -> None:
    original = scene(640, 480, seed=1)
    async with make_client(VERIFICATION_CANDIDATES=candidates) as client:
        query = await stored(client, original)
        first = await stored(client, original.resize((400, 300)))
        second = await stored(client, original.crop((0, 0, 600, 450)))
        matches = await similar(client, query)

    verified = {m["id"] for m in matches if m["evidence"] is not None}
    assert len(verified) == candidates
    assert verified <= {first, second}


async def test_unreadable_stored_features_fall_back_to_the_score(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    original = scene(640, 480, seed=1)
    query = await stored(client, original)
    copy = await stored(client, original.resize((320, 240)))
    await connection.execute(
        update(images).where(images.c.id == uuid.UUID(copy)).values(local_features=b"LF1junk")
    )

    (match,) = [m for m in await similar(client, query) if m["id"] == copy]

    assert match["similarity_score"] >= 0.7
    assert (match["match"], match["evidence"]) == ("near_duplicate", None)
