"""The duplicate-group endpoints on the test's rolled-back transaction: real uploads, real files."""

import uuid
from typing import Any

import pytest
from httpx import AsyncClient
from PIL import ImageEnhance
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from tests.support.app import MakeClient
from tests.support.duplicates import Circle, store_and_link
from tests.support.http import assert_error, stored_files, upload
from tests.support.images import encode, scene

DUPLICATES = "/api/v1/duplicates"


def copies_of(seed: int) -> list[bytes]:
    """A picture (640 x 480) and three edited copies: smaller, re-compressed, brighter."""
    original = scene(640, 480, seed=seed)
    return [
        encode(original, "JPEG", quality=92),
        encode(original.resize((320, 240)), "JPEG", quality=60),
        encode(original, "JPEG", quality=30),
        encode(ImageEnhance.Brightness(original.resize((480, 360))).enhance(1.2), "JPEG"),
    ]


async def upload_all(client: AsyncClient, pictures: list[bytes], prefix: str) -> list[str]:
    ids = []
    for number, data in enumerate(pictures):
        response = await upload(client, data, f"{prefix}-{number}.jpg")
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def only_group(client: AsyncClient) -> dict[str, Any]:
    listing = (await client.get(DUPLICATES)).json()
    assert listing["total"] == 1, listing
    group: dict[str, Any] = listing["items"][0]
    return group


async def test_uploaded_copies_form_a_group_with_its_keeper_first_and_unrelated_pictures_none(
    client: AsyncClient,
) -> None:
    original, small, *_ = await upload_all(client, copies_of(seed=1)[:2], "holiday")
    await upload_all(client, [encode(scene(640, 480, seed=2), "JPEG")], "unrelated")

    listing = (await client.get(DUPLICATES)).json()
    [group] = listing["items"]
    read = await client.get(f"{DUPLICATES}/{group['id']}")

    assert (listing["total"], listing["skip"], listing["limit"]) == (1, 0, 20)
    assert listing["rebuild_needed"] is False
    assert group["size"] == 2
    assert group["suggested_keeper"] == original  # 640 x 480 beats 320 x 240
    assert [m["id"] for m in group["members"]] == [original, small]
    assert [m["suggested_keeper"] for m in group["members"]] == [True, False]
    assert group["members"][0]["filename"] == "holiday-0.jpg"
    assert (group["members"][0]["width"], group["members"][0]["height"]) == (640, 480)
    [link] = group["links"]
    assert sorted(link["image_ids"]) == sorted([original, small])
    assert link["match"] == "near_duplicate" and link["similarity_score"] > 0.9
    # Verified from the later upload: the small copy's keypoints map onto the original at
    # twice the scale.
    evidence = link["verification"]
    assert evidence["query_id"] == small
    assert (evidence["transform"], evidence["mirrored"]) == ("similarity", False)
    assert evidence["scale"] == pytest.approx(2.0, abs=0.05)
    assert evidence["rotation"] == pytest.approx(0.0, abs=1.0)
    assert 0 < evidence["inliers"] <= evidence["matches"]
    assert read.status_code == 200 and read.json() == group
    assert read.headers["etag"].startswith('"') and len(read.headers["etag"]) == 34


async def test_a_group_keeps_its_id_as_copies_join_it_and_a_copy_stored_again_changes_nothing(
    client: AsyncClient,
) -> None:
    pictures = copies_of(seed=3)
    await upload_all(client, pictures[:2], "first")
    first = await only_group(client)
    await upload_all(client, pictures[2:], "later")
    again = await upload(client, pictures[0], "again.jpg")
    grown = await only_group(client)

    assert again.status_code == 200
    assert grown["id"] == first["id"]
    assert grown["size"] == 4


async def test_resolve_keeps_the_chosen_copy_and_deletes_the_others_rows_and_files(
    make_client: MakeClient, settings: Settings
) -> None:
    async with make_client() as client:
        ids = await upload_all(client, copies_of(seed=4), "copy")
        [unrelated] = await upload_all(client, [encode(scene(seed=5), "JPEG")], "other")
        group = await only_group(client)
        etag = (await client.get(f"{DUPLICATES}/{group['id']}")).headers["etag"]
        files_before = len(stored_files(settings))

        resolved = await client.post(
            f"{DUPLICATES}/{group['id']}/resolve",
            json={"keep": [group["suggested_keeper"]]},
            headers={"If-Match": etag},
        )
        listing = (await client.get("/api/v1/images/")).json()
        groups = (await client.get(DUPLICATES)).json()
        gone = await client.get(f"{DUPLICATES}/{group['id']}")
        deleted = await client.get(f"/api/v1/images/{ids[1]}")

    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["group_id"] == group["id"]
    assert body["kept"] == [ids[0]]
    assert sorted(body["deleted"]) == sorted(ids[1:])
    assert sorted(item["id"] for item in listing["items"]) == sorted([ids[0], unrelated])
    assert (files_before, len(stored_files(settings))) == (5, 2)
    assert groups["total"] == 0
    assert_error(gone, 404, "duplicate_group_not_found")
    assert_error(deleted, 404, "image_not_found")


async def test_resolve_refuses_a_stale_etag_a_stranger_and_no_keep_and_deletes_nothing(
    client: AsyncClient,
) -> None:
    pictures = copies_of(seed=6)
    await upload_all(client, pictures[:2], "copy")
    [stranger] = await upload_all(client, [encode(scene(seed=7), "JPEG")], "other")
    group = await only_group(client)
    etag = (await client.get(f"{DUPLICATES}/{group['id']}")).headers["etag"]
    await upload_all(client, pictures[2:3], "joined")  # the group changes
    path = f"{DUPLICATES}/{group['id']}/resolve"
    keeper = group["suggested_keeper"]

    stale = await client.post(path, json={"keep": [keeper]}, headers={"If-Match": etag})
    strange = await client.post(path, json={"keep": [keeper, stranger]})
    empty = await client.post(path, json={"keep": []})
    unknown = await client.post(f"{DUPLICATES}/{uuid.uuid4()}/resolve", json={"keep": [keeper]})
    malformed = await client.get(f"{DUPLICATES}/not-a-uuid")

    assert_error(stale, 412, "group_changed")
    assert_error(strange, 422, "not_a_group_member")
    assert stranger in strange.json()["detail"]
    assert_error(empty, 422, "validation_error")
    assert_error(unknown, 404, "duplicate_group_not_found")
    assert_error(malformed, 422, "validation_error")
    assert (await only_group(client))["size"] == 3


async def test_not_duplicates_separates_a_pair_for_good(client: AsyncClient) -> None:
    original, copy = await upload_all(client, copies_of(seed=8)[:2], "pair")

    marked = await client.post(f"{DUPLICATES}/not-duplicates", json={"pairs": [[copy, original]]})
    after = (await client.get(DUPLICATES)).json()
    same = await client.post(f"{DUPLICATES}/not-duplicates", json={"pairs": [[copy, copy]]})
    unknown = await client.post(
        f"{DUPLICATES}/not-duplicates", json={"pairs": [[copy, str(uuid.uuid4())]]}
    )
    # The same bytes stored again (after a delete) do not link either.
    await client.delete(f"/api/v1/images/{copy}")
    again = await upload(client, copies_of(seed=8)[1], "again.jpg")
    after_reupload = (await client.get(DUPLICATES)).json()

    assert marked.status_code == 200, marked.text
    assert marked.json() == {"marked": 1, "groups": []}
    assert after["total"] == 0
    assert_error(same, 422, "validation_error")
    assert_error(unknown, 404, "image_not_found")
    assert again.status_code == 201 and again.json()["id"] != copy
    assert after_reupload["total"] == 0


async def test_deleting_the_image_that_links_a_chain_splits_its_group(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    d, a, b, c, e = await store_and_link(connection, Circle(seed=21), [-10, 0, 40, 80, 90])
    before = await only_group(client)

    deleted = await client.delete(f"/api/v1/images/{b}")
    after = (await client.get(DUPLICATES)).json()

    assert deleted.status_code == 204
    assert before["size"] == 5
    pieces = {group["id"]: {m["id"] for m in group["members"]} for group in after["items"]}
    assert after["total"] == 2
    assert sorted(pieces.values(), key=sorted) == sorted(
        [{str(d), str(a)}, {str(c), str(e)}], key=sorted
    )
    assert pieces[before["id"]] == {str(d), str(a)}  # the piece with the oldest upload


async def test_the_listing_pages_filters_and_refuses_bad_parameters(client: AsyncClient) -> None:
    await upload_all(client, copies_of(seed=9)[:3], "three")
    await upload_all(client, copies_of(seed=10)[:2], "two")

    first = (await client.get(DUPLICATES, params={"limit": 1})).json()
    second = (await client.get(f"{DUPLICATES}/", params={"limit": 1, "skip": 1})).json()
    png = (await client.get(DUPLICATES, params={"content_type": "image/png"})).json()
    future = await client.get(DUPLICATES, params={"uploaded_after": "2100-01-01T00:00:00Z"})
    bad_type = await client.get(DUPLICATES, params={"content_type": "text/plain"})
    bad_limit = await client.get(DUPLICATES, params={"limit": 0})
    naive = await client.get(DUPLICATES, params={"uploaded_before": "2020-01-01T00:00:00"})

    assert [group["size"] for group in first["items"]] == [3]
    assert [group["size"] for group in second["items"]] == [2]
    assert first["total"] == second["total"] == 2
    assert (png["total"], future.json()["total"]) == (0, 0)
    for refused in (bad_type, bad_limit, naive):
        assert_error(refused, 422, "validation_error")
