"""The rules of duplicate groups, on the real database (each test rolled back), with images
whose vectors lie on a circle: two images link when their angle is under 45.6 degrees."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.core.database import Database
from app.core.local_store import LocalImageStore
from app.errors import DuplicateGroupNotFound, GroupChanged, ImageNotFound, NotAGroupMember
from app.imaging.verification import extract
from app.models import duplicates as tables
from app.models.duplicates import duplicate_decisions, duplicate_groups, duplicate_links
from app.services import duplicates
from app.services.duplicates import GroupMember, assign_group_ids, connected_sets, keeper_order
from app.services.images import ImageFilter, delete_image
from tests.support.duplicates import (
    MODEL,
    Circle,
    group_sets,
    options,
    store,
    store_and_link,
)
from tests.support.images import scene


async def test_a_chain_of_links_is_one_group_and_deleting_its_middle_splits_it(
    connection: AsyncConnection, tmp_path: Path
) -> None:
    # D - A - B - C - E: only neighbours on the chain are near-duplicates.
    circle = Circle(seed=1)
    d, a, b, c, e = await store_and_link(connection, circle, [-10, 0, 40, 80, 90])
    [(group_id, members)] = (await group_sets(connection)).items()

    await delete_image(connection, b, store=LocalImageStore(tmp_path))
    checked = await duplicates.settle_groups(connection)
    after = await group_sets(connection)

    assert members == {d, a, b, c, e}
    assert checked == 1
    # Two pieces of two: the one with the oldest upload (D) keeps the id.
    assert after == {group_id: {d, a}, next(g for g in after if g != group_id): {c, e}}
    assert await duplicates.settle_groups(connection) == 0  # nothing flagged any more


async def test_a_piece_of_one_image_leaves_and_a_group_of_one_is_dissolved(
    connection: AsyncConnection, tmp_path: Path
) -> None:
    circle = Circle(seed=2)
    a, b, c = await store_and_link(connection, circle, [0, 40, 80])
    [group_id] = await group_sets(connection)

    await delete_image(connection, a, store=LocalImageStore(tmp_path))
    await duplicates.settle_groups(connection)
    kept = await group_sets(connection)
    await delete_image(connection, c, store=LocalImageStore(tmp_path))
    await duplicates.settle_groups(connection)
    groups_left = await connection.scalar(select(func.count()).select_from(duplicate_groups))

    assert kept == {group_id: {b, c}}
    assert groups_left == 0


async def test_a_group_that_grows_keeps_its_id_and_a_merge_keeps_the_largest_groups_id(
    connection: AsyncConnection,
) -> None:
    circle = Circle(seed=3)
    a, b = await store_and_link(connection, circle, [0, -10])
    [first] = await group_sets(connection)
    c, d, e = await store_and_link(connection, circle, [80, 90, 85])
    second = next(g for g in await group_sets(connection) if g != first)
    # 40 degrees from A and from C (and 45 from E): it links both groups.
    [bridge] = await store_and_link(connection, circle, [40])
    merged = await group_sets(connection)
    [joiner] = await store_and_link(connection, circle, [95])
    grown = await group_sets(connection)

    assert merged == {second: {a, b, c, d, e, bridge}}  # the larger of the two kept its id
    assert grown == {second: {a, b, c, d, e, bridge, joiner}}


async def test_unrelated_images_form_no_group(connection: AsyncConnection) -> None:
    await store_and_link(connection, Circle(seed=4), [0])
    await store_and_link(connection, Circle(seed=5), [0])
    await store_and_link(connection, Circle(seed=4), [60])

    assert await group_sets(connection) == {}


async def test_each_link_is_recorded_once_with_its_evidence(connection: AsyncConnection) -> None:
    a, b = await store_and_link(connection, Circle(seed=6), [0, 30])
    [group] = (await duplicates.list_groups(connection, skip=0, limit=10))[0]
    rows = (await connection.execute(select(duplicate_links))).all()

    assert len(rows) == 1
    assert (rows[0].image_a, rows[0].image_b) == tuple(sorted((a, b)))
    [link] = group.links
    assert link.image_ids == tuple(sorted((a, b)))
    assert link.match == "near_duplicate"
    assert link.similarity_score == pytest.approx(0.866, abs=1e-3)  # cos 30 degrees
    assert link.verification is None


async def test_a_second_look_at_an_image_already_linked_changes_nothing(
    connection: AsyncConnection,
) -> None:
    a, b = await store_and_link(connection, Circle(seed=7), [0, 20])
    before = await group_sets(connection)
    links = await duplicates.find_duplicate_links(connection, a, options())

    await duplicates.link_image(connection, a, options(), new=False)  # the same bytes again

    assert [link.image_id for link in links] == [b]
    assert await group_sets(connection) == before


@pytest.mark.parametrize(
    ("misses_first", "linked"),
    [(2, True), (duplicates.LINK_MISSES_IN_A_ROW, False)],
    ids=["after-two-misses", "after-three-misses"],
)
async def test_verification_of_link_candidates_stops_after_three_in_a_row_that_do_not_link(
    connection: AsyncConnection, misses_first: int, linked: bool
) -> None:
    circle = Circle(seed=30)
    picture = scene(seed=30)
    query = await store(
        connection, circle.at(0), number=0, local_features=extract(picture).to_bytes()
    )
    # Unrelated pictures nearer than the copy (scores 0.98 and more: only verification tells).
    for number in range(misses_first):
        unrelated = extract(scene(seed=31 + number)).to_bytes()
        await store(connection, circle.at(5 + number), number=1 + number, local_features=unrelated)
    copy = extract(picture.resize((240, 180))).to_bytes()
    copy_id = await store(connection, circle.at(10), number=9, local_features=copy)

    links = await duplicates.find_duplicate_links(connection, query, options())

    assert [link.image_id for link in links] == ([copy_id] if linked else [])
    if linked:
        assert links[0].match == "near_duplicate"
        assert links[0].verification is not None and links[0].verification["inliers"] >= 15


@pytest.mark.parametrize(("angle", "linked"), [(30, True), (50, False)])
async def test_a_picture_too_flat_for_keypoints_links_to_a_textured_one_by_its_score(
    connection: AsyncConnection, angle: float, linked: bool
) -> None:
    circle = Circle(seed=40)
    textured = extract(scene(seed=40)).to_bytes()
    flat = extract(Image.new("RGB", (320, 240), (120, 130, 140))).to_bytes()
    query = await store(connection, circle.at(0), number=0, local_features=textured)
    # cos(30 degrees) = 0.87 and cos(50 degrees) = 0.64, about NEAR_DUPLICATE_THRESHOLD 0.7
    candidate = await store(connection, circle.at(angle), number=1, local_features=flat)

    links = await duplicates.find_duplicate_links(connection, query, options())

    expected = [(candidate, "near_duplicate", None)] if linked else []
    assert [(link.image_id, link.match, link.verification) for link in links] == expected


def _member(number: int, width: int, height: int, file_size: int) -> GroupMember:
    return GroupMember(
        id=uuid.UUID(int=number),
        filename=f"{number}.jpg",
        content_type="image/jpeg",
        file_size=file_size,
        width=width,
        height=height,
        upload_timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=number),
    )


def test_the_suggested_keeper_has_the_most_pixels_then_the_largest_file_then_is_oldest() -> None:
    small = _member(1, 320, 240, 90_000)
    large_light = _member(2, 640, 480, 40_000)
    large_heavy = _member(3, 480, 640, 80_000)  # as many pixels, portrait
    large_heavy_newer = _member(4, 640, 480, 80_000)

    ordered = sorted([small, large_light, large_heavy_newer, large_heavy], key=keeper_order)

    assert ordered == [large_heavy, large_heavy_newer, large_light, small]


async def test_the_group_lists_the_suggested_keeper_first(connection: AsyncConnection) -> None:
    circle = Circle(seed=8)
    small = await store(connection, circle.at(0), number=0, width=320, height=240)
    large = await store(connection, circle.at(5), number=1, width=640, height=480)
    await duplicates.link_image(connection, small, options(), new=True)
    await duplicates.link_image(connection, large, options(), new=True)

    [group] = (await duplicates.list_groups(connection, skip=0, limit=10))[0]

    assert [member.id for member in group.members] == [large, small]
    assert group.suggested_keeper == large
    assert [member.suggested_keeper for member in group.members] == [True, False]


async def test_groups_are_listed_largest_first_and_filtered_by_their_members(
    connection: AsyncConnection,
) -> None:
    pair = await store_and_link(connection, Circle(seed=9), [0, 10])
    triple = await store_and_link(connection, Circle(seed=10), [0, 10, 20])
    after_pair = datetime(2026, 1, 1, 0, 2, tzinfo=UTC)  # the triple's last upload is at 0:02

    page, total = await duplicates.list_groups(connection, skip=0, limit=1)
    second_page, _ = await duplicates.list_groups(connection, skip=1, limit=1)
    recent, recent_total = await duplicates.list_groups(
        connection, skip=0, limit=10, where=ImageFilter(uploaded_after=after_pair)
    )
    png, png_total = await duplicates.list_groups(
        connection, skip=0, limit=10, where=ImageFilter(content_type="image/png")
    )

    assert total == 2
    assert {member.id for member in page[0].members} == set(triple)
    assert {member.id for member in second_page[0].members} == set(pair)
    assert (recent_total, [group.size for group in recent]) == (1, [3])
    assert (png_total, png) == (0, [])


async def test_not_duplicates_splits_the_pair_and_it_never_links_again(
    connection: AsyncConnection,
) -> None:
    circle = Circle(seed=11)
    a, b = await store_and_link(connection, circle, [0, 10])

    groups = await duplicates.mark_not_duplicates(connection, [(b, a)])
    relinked = await duplicates.find_duplicate_links(connection, a, options())
    await duplicates.record_links(
        connection,
        {a: relinked},
        build=(await duplicates.current_build(connection, options())).number,
    )
    decisions = (await connection.execute(select(duplicate_decisions))).all()

    assert groups == []
    assert [link.image_id for link in relinked] == [b]  # the search still finds it ...
    assert await group_sets(connection) == {}  # ... but it is never linked
    assert [row.decision for row in decisions] == ["not_duplicates"]


async def test_not_duplicates_of_an_image_that_is_not_stored_is_image_not_found(
    connection: AsyncConnection,
) -> None:
    [a] = await store_and_link(connection, Circle(seed=12), [0])

    with pytest.raises(ImageNotFound):
        await duplicates.mark_not_duplicates(connection, [(a, uuid.uuid4())])


async def test_resolve_deletes_the_others_and_keeping_two_records_them_kept_together(
    connection: AsyncConnection, tmp_path: Path
) -> None:
    a, b, c, d = await store_and_link(connection, Circle(seed=13), [0, 10, 20, 30])
    [group_id] = await group_sets(connection)
    group = await duplicates.get_group(connection, group_id)

    resolution = await duplicates.resolve_group(
        connection, group_id, keep={a, c}, store=LocalImageStore(tmp_path), if_match=group.etag
    )
    stored = await connection.scalar(text("SELECT count(*) FROM images"))
    decisions = (await connection.execute(select(duplicate_decisions.c.decision))).scalars()

    assert sorted(resolution.kept) == sorted([a, c])
    assert sorted(resolution.deleted) == sorted([b, d])
    assert stored == 2
    assert list(decisions) == ["kept_both"]
    assert await group_sets(connection) == {}


async def test_resolve_refuses_a_changed_group_a_stranger_and_an_unknown_group(
    connection: AsyncConnection, tmp_path: Path
) -> None:
    circle = Circle(seed=14)
    a, b = await store_and_link(connection, circle, [0, 10])
    [group_id] = await group_sets(connection)
    etag = (await duplicates.get_group(connection, group_id)).etag
    [stranger] = await store_and_link(connection, Circle(seed=15), [0])
    await store_and_link(connection, circle, [20])  # the group grows: its ETag changes
    store_ = LocalImageStore(tmp_path)

    with pytest.raises(GroupChanged):
        await duplicates.resolve_group(connection, group_id, keep={a}, store=store_, if_match=etag)
    with pytest.raises(NotAGroupMember):
        await duplicates.resolve_group(connection, group_id, keep={a, stranger}, store=store_)
    with pytest.raises(DuplicateGroupNotFound):
        await duplicates.resolve_group(connection, uuid.uuid4(), keep={a}, store=store_)
    assert (await duplicates.get_group(connection, group_id)).size == 3  # nothing deleted
    assert b in {member.id for member in (await duplicates.get_group(connection, group_id)).members}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("VERIFY_NEAR_DUPLICATES", False),
        ("VERIFICATION_CANDIDATES", 10),
        ("NEAR_DUPLICATE_THRESHOLD", 0.75),
    ],
)
async def test_a_build_made_with_other_link_settings_needs_a_rebuild(
    connection: AsyncConnection, setting: str, value: object
) -> None:
    await _finished_build(connection, verification_candidates=20)  # the defaults'

    same = await duplicates.groups_state(connection, options())
    changed = await duplicates.groups_state(
        connection, options(Settings.model_validate({setting: value}))
    )

    assert same.rebuild_needed is False
    assert changed.rebuild_needed is True


async def test_a_build_recorded_before_its_verification_was_needs_a_rebuild(
    connection: AsyncConnection,
) -> None:
    await _finished_build(connection, verification_candidates=None)

    state = await duplicates.groups_state(connection, options())

    assert state.build.verification_candidates is None
    assert state.rebuild_needed is True


async def _finished_build(connection: AsyncConnection, verification_candidates: int | None) -> None:
    """A finished build of this test's model (perceptual) and threshold 0.7, the current one."""
    await connection.execute(
        text(
            "INSERT INTO duplicate_builds (build, embedding_model, near_duplicate_threshold, "
            "verification_candidates, finished_at) SELECT max(build) + 1, :model, 0.7, "
            ":verified, NOW() FROM duplicate_builds"
        ),
        {"model": MODEL, "verified": verification_candidates},
    )


def test_connected_sets_follow_the_links() -> None:
    a, b, c, d = (uuid.UUID(int=n) for n in range(4))

    sets = connected_sets([a, b, c, d], [(a, b), (c, b)])

    assert sorted(sets, key=len) == [{d}, {a, b, c}]


def test_after_a_rebuild_each_group_keeps_the_id_of_the_old_group_it_overlaps_most() -> None:
    one, two, three, four, five, six, seven, eight = (uuid.UUID(int=n) for n in range(1, 9))
    old_a, old_b = uuid.UUID(int=100), uuid.UUID(int=200)
    old_groups = {one: old_a, two: old_a, three: old_b, four: old_b}
    created = {old_a: datetime(2026, 1, 1, tzinfo=UTC), old_b: datetime(2026, 1, 2, tzinfo=UTC)}
    fresh = uuid.UUID(int=999)
    # A grew and took three from B; B's remaining member four is with a newcomer; a new pair.
    components = [{one, two, three, five}, {four, six}, {seven, eight}]

    ids = assign_group_ids(components, old_groups, created, lambda: fresh)

    assert ids == [old_a, old_b, fresh]


@pytest.mark.parametrize(
    "table",
    [
        tables.duplicate_builds,
        tables.duplicate_scans,
        tables.duplicate_links,
        tables.duplicate_groups,
        tables.duplicate_members,
        tables.duplicate_decisions,
    ],
    ids=lambda table: table.name,
)
async def test_the_duplicate_tables_match_init_sql(database: Database, table: Any) -> None:
    async with database.engine.connect() as connection:
        columns = await connection.scalars(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = :name ORDER BY ordinal_position"
            ),
            {"name": table.name},
        )
        assert list(columns) == [column.name for column in table.columns]
