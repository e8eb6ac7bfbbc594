"""Duplicate groups: which stored images are copies of each other, and which copy to keep.

A **link** joins two stored images that the service's own search labels `exact` or
`near_duplicate`, verification stopping early once the candidates stop linking
(`find_duplicate_links`, the one place that decides it). A **group** is a
connected set of linked images, two or more. Groups are kept in tables (init.sql) and kept
current as the collection changes:

- an upload looks for its links once its own transaction has committed, then joins a group,
  merges the groups it links, or starts one (`link_image`);
- a delete removes the image's links and membership with its row (ON DELETE CASCADE) and flags
  its group; `settle_groups` then splits what is no longer connected;
- `rebuild_groups` looks for every image's links again (after a change of model, threshold
  or verification), resumably, and regroups at the end.

Every change of groups runs under one transaction-scoped advisory lock (`_GROUPS_LOCK`). That
is what makes concurrent uploads of copies of one picture end in one group: each upload
commits its row before it searches, so of any two uploads the later one to commit finds the
earlier one, and the group writes that follow are serialised, each reading the memberships
the previous one committed. The searches themselves run outside the lock, in parallel.

Group ids are stable: a group that only grows keeps its id; when groups merge, the largest
keeps its id (then the oldest, then the smallest id); when a group splits, the largest piece
keeps it (then the piece with the oldest upload); a rebuild gives each new group the id of
the old group it shares most members with.

Decisions are keyed by the pair's content hashes, so they hold for any later upload of the same
bytes: a pair marked `not_duplicates` (or kept both by a resolve) is never linked again.
"""

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any, Literal, TypeVar

from sqlalchemy import Row, and_, exists, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.concurrency import run_in_threadpool

from app.core.database import transaction
from app.core.resources import SearchDefaults
from app.core.storage import ImageStore
from app.errors import (
    DuplicateGroupNotFound,
    EmbeddingOutdated,
    GroupChanged,
    ImageNotFound,
    NotAGroupMember,
    RebuildRunning,
)
from app.imaging.verification import LocalFeatures, verify
from app.models.duplicates import (
    duplicate_builds,
    duplicate_groups,
    duplicate_links,
    duplicate_members,
    duplicate_scans,
)
from app.models.image import images
from app.services import images as image_records
from app.services import search
from app.services.images import ImageFilter
from app.services.search import SearchOptions

logger = logging.getLogger(__name__)

# How many nearest neighbours an image's link search considers. Links only need to connect a
# group, not to list every pair: an image with more copies than this still reaches them all
# through the copies it links.
LINK_CANDIDATES = 20

# (key1, key2) of the advisory locks: the two-integer form, apart from the one-integer keys of
# the content-hash and schema locks.
_GROUPS_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('duplicate_groups'), 0)")
_REBUILD_LOCK = "hashtext('duplicate_groups'), 1"

# A group write that collided with a delete of one of its images (foreign key violation) or
# with another transaction (deadlock) is run again: it reads the state afresh.
_RETRIED_SQLSTATES = frozenset({"23503", "40P01"})
_WRITE_ATTEMPTS = 3
_T = TypeVar("_T")
_Node = TypeVar("_Node", bound=Hashable)

LinkMatch = Literal["exact", "near_duplicate"]
Decision = Literal["not_duplicates", "kept_both"]


def link_options(defaults: SearchDefaults, model: str) -> SearchOptions:
    """The search a link comes from: the `LINK_CANDIDATES` nearest images of the current
    `model`, labelled as `/similar` labels them (`find_duplicate_links` says how): with
    verification on (VERIFY_NEAR_DUPLICATES), the first VERIFICATION_CANDIDATES are verified
    geometrically and a verified one links whatever its score; otherwise a score at or above
    NEAR_DUPLICATE_THRESHOLD links."""
    return SearchOptions(
        model=model,
        limit=LINK_CANDIDATES,
        threshold=defaults.near_duplicate_threshold,
        near_duplicate_threshold=defaults.near_duplicate_threshold,
        index=defaults.index,
        verification_candidates=defaults.verification_candidates,
        regions=defaults.regions,
        exact_scan_seconds=defaults.exact_scan_seconds,
    )


@dataclass(frozen=True)
class DuplicateLink:
    """A link from a query image to `image_id`, with its evidence: `verification` is what
    near-duplicate verification found (`app.imaging.verification.Evidence` as a dict), None
    for an `exact` match or a near-duplicate labelled by its score."""

    image_id: uuid.UUID
    similarity_score: float  # cosine similarity
    match: LinkMatch
    verification: dict[str, Any] | None = None


async def find_duplicate_links(
    connection: AsyncConnection, image_id: uuid.UUID, options: SearchOptions
) -> list[DuplicateLink]:
    """The stored images `image_id` is a copy of: its `exact` and `near_duplicate` matches,
    best first, at most `options.limit`. The one place that decides what a link is.

    The candidates are a `/similar` search's (`search.search_stored_image`) and are labelled
    by its rules: the same bytes are `exact`; with verification on, the first
    `verification_candidates` are verified geometrically where both pictures have local
    features, and a verified one links whatever its score; otherwise a score at or above
    `near_duplicate_threshold` links. Two differences: the candidates are verified in order of
    score and verification stops after `LINK_MISSES_IN_A_ROW` candidates in a row that do not
    link, since copies rank before look-alikes (see that constant); and a pair of which only one
    picture has too few keypoints for the geometric check (`LocalFeatures.low_texture`, which
    verification never takes for a copy of a textured one) is labelled by its score, as a pair
    without features is: a low-contrast or blurred copy of a photo can fall under the keypoint
    minimum while it scores 0.95 with its original (bench/duplicates.py quality). Raises
    ImageNotFound, EmbeddingOutdated."""
    found = await search.search_stored_image(connection, image_id, options)
    query_hash = found.rows[0].query_hash
    candidates = [row for row in found.rows if row.id is not None]
    if not options.verified:
        return [
            link
            for row in candidates[: options.limit]
            if (link := _score_link(row, query_hash, options)) is not None
        ]
    verified = candidates[: options.verification_candidates]
    links = await _verified_links(connection, image_id, query_hash, verified, options)
    links += [
        link
        for row in candidates[options.verification_candidates :]
        if (link := _score_link(row, query_hash, options)) is not None
    ]
    return links[: options.limit]


# Verification of an image's link candidates (in order of score) stops after this many in a
# row that do not link. With the cnn embedder the copies of a photo rank before unrelated
# photos (bench/quality.py: AP 1.000 for the mild edits and most hard ones; screenshots,
# collage tiles and text overlays 0.50 to 0.88, which a link search may stop short of), so
# candidates that fail are mostly followed by look-alikes; three leave room for a copy that
# fails ahead of one that passes (after one, bench/duplicates.py quality lost a rotated copy).
# It is what makes a link search cost a few verifications instead of VERIFICATION_CANDIDATES
# (one that fails costs milliseconds of CPU: bench/duplicates.py rebuild measures it).
LINK_MISSES_IN_A_ROW = 3
# Local features are read this many candidates at a time (each up to 28 KB).
_FEATURES_READ = 4


def _score_of(row: Row[tuple[object, ...]]) -> float:
    return max(-1.0, min(1.0, 1.0 - float(row.distance)))


def _score_link(
    row: Row[tuple[object, ...]], query_hash: str, options: SearchOptions
) -> DuplicateLink | None:
    """The label of an unverified candidate: the same bytes, or a score at or above
    NEAR_DUPLICATE_THRESHOLD."""
    score = _score_of(row)
    if row.content_hash == query_hash:
        return DuplicateLink(row.id, score, "exact")
    if score >= options.near_duplicate_threshold:
        return DuplicateLink(row.id, score, "near_duplicate")
    return None


async def _verified_links(
    connection: AsyncConnection,
    image_id: uuid.UUID,
    query_hash: str,
    candidates: Sequence[Row[tuple[object, ...]]],
    options: SearchOptions,
) -> list[DuplicateLink]:
    """Verify `candidates` in order (in a worker thread), their local features read a few at a
    time, until LINK_MISSES_IN_A_ROW in a row do not link."""
    links: list[DuplicateLink] = []
    misses = 0
    query: LocalFeatures | None = None
    position = 0
    while position < len(candidates) and misses < LINK_MISSES_IN_A_ROW:
        chunk = candidates[position : position + _FEATURES_READ]
        wanted = [row.id for row in chunk] + ([image_id] if position == 0 else [])
        position += len(chunk)
        stored = await _features(connection, wanted)
        query = stored.pop(image_id, query)
        chunk_links, misses = await run_in_threadpool(
            _label_chunk, chunk, query_hash, query, stored, misses, options
        )
        links += chunk_links
    return links


def _label_chunk(
    chunk: Sequence[Row[tuple[object, ...]]],
    query_hash: str,
    query: LocalFeatures | None,
    stored: Mapping[uuid.UUID, LocalFeatures | None],
    misses: int,
    options: SearchOptions,
) -> tuple[list[DuplicateLink], int]:
    """The links among `chunk` and the misses in a row after it (pure; off the event loop)."""
    links = []
    for row in chunk:
        if misses >= LINK_MISSES_IN_A_ROW:
            break
        candidate = stored.get(row.id)
        if (
            row.content_hash == query_hash
            or query is None
            or candidate is None
            or query.low_texture != candidate.low_texture
        ):
            link = _score_link(row, query_hash, options)
        else:
            evidence = verify(query, candidate)
            link = (
                None
                if evidence is None
                else DuplicateLink(
                    row.id, _score_of(row), "near_duplicate", dataclasses.asdict(evidence)
                )
            )
        if link is None:
            misses += 1
        else:
            links.append(link)
            misses = 0
    return links, misses


async def _features(
    connection: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, LocalFeatures | None]:
    """The parsed local features of these images (None where there are none, or where they
    cannot be read: the label then follows the score, as in a search)."""
    rows = await connection.exec_driver_sql(
        "SELECT id, local_features FROM images WHERE id = ANY($1::uuid[])", (list(ids),)
    )
    return {row.id: _parsed(row.local_features) for row in rows}


def _parsed(data: bytes | None) -> LocalFeatures | None:
    if not data:
        return None
    try:
        return LocalFeatures.from_bytes(data)
    except (ValueError, struct.error):
        return None


# --- Builds: the settings the links were found with ---------------------------------------


@dataclass(frozen=True)
class Build:
    """A build of the links and the settings that decide which links exist: the model, the
    near-duplicate threshold and how many candidates are verified (0: verification off; None:
    unknown, a build recorded before it was)."""

    number: int
    model: str
    near_duplicate_threshold: float
    verification_candidates: int | None
    finished: bool

    def made_with(self, options: SearchOptions) -> bool:
        return (
            self.model == options.model
            and math.isclose(
                self.near_duplicate_threshold, options.near_duplicate_threshold, abs_tol=1e-9
            )
            and self.verification_candidates == options.verification_candidates
        )


def describe_settings(
    model: str, near_duplicate_threshold: float, verification_candidates: int | None
) -> str:
    """The settings of a build as the CLI and the logs print them."""
    verification = (
        "verification unknown"
        if verification_candidates is None
        else "verification off"
        if verification_candidates == 0
        else f"verification of the {verification_candidates} nearest"
    )
    return f"model {model}, near-duplicate threshold {near_duplicate_threshold:.2f}, {verification}"


def _build(row: Row[tuple[object, ...]]) -> Build:
    return Build(
        number=row.build,
        model=row.embedding_model,
        near_duplicate_threshold=row.near_duplicate_threshold,
        verification_candidates=row.verification_candidates,
        finished=row.finished_at is not None,
    )


async def current_build(connection: AsyncConnection, options: SearchOptions) -> Build:
    """The build links are recorded under (the latest). A database without one gets build 1
    with `options`: finished if no image is stored yet, else unfinished, since the images
    stored before need a rebuild."""
    query = select(duplicate_builds).order_by(duplicate_builds.c.build.desc()).limit(1)
    row = (await connection.execute(query)).one_or_none()
    if row is not None:
        return _build(row)
    await connection.execute(
        text(
            "INSERT INTO duplicate_builds (build, embedding_model, near_duplicate_threshold, "
            "verification_candidates, finished_at) SELECT 1, :model, :threshold, :verified, "
            "CASE WHEN EXISTS (SELECT 1 FROM images) THEN NULL ELSE NOW() END "
            "ON CONFLICT (build) DO NOTHING"
        ),
        {
            "model": options.model,
            "threshold": options.near_duplicate_threshold,
            "verified": options.verification_candidates,
        },
    )
    return _build((await connection.execute(query)).one())


@dataclass(frozen=True)
class GroupsState:
    build: Build
    # A rebuild is unfinished, or ran with other settings (model, threshold, verification).
    rebuild_needed: bool


async def groups_state(connection: AsyncConnection, options: SearchOptions) -> GroupsState:
    build = await current_build(connection, options)
    return GroupsState(build, not (build.finished and build.made_with(options)))


async def prepare_groups(connection: AsyncConnection, options: SearchOptions) -> GroupsState:
    """At start-up: the first build on a new database, the splits a stopped process left
    undone, and a warning when the groups need a rebuild."""
    state = await groups_state(connection, options)
    await settle_groups(connection)
    if state.rebuild_needed:
        build = state.build
        built = describe_settings(
            build.model, build.near_duplicate_threshold, build.verification_candidates
        )
        now = describe_settings(
            options.model, options.near_duplicate_threshold, options.verification_candidates
        )
        if built == now:  # only the rebuild's end is missing
            reason = f"a rebuild with {now} was stopped before it finished"
        else:
            reason = f"{'a rebuild was stopped' if not build.finished else 'built'} with {built}; "
            reason += f"now {now}"
        logger.warning(
            "duplicate groups are out of date (%s): run `python -m app duplicates --rebuild`",
            reason,
        )
    return state


# --- Connected components -----------------------------------------------------------------


class _Components:
    """Union-find (with path halving) over hashable keys."""

    def __init__(self) -> None:
        self._parent: dict[object, object] = {}

    def add(self, key: object) -> None:
        self._parent.setdefault(key, key)

    def find(self, key: object) -> object:
        parent = self._parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(self, a: object, b: object) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self._parent[root_b] = root_a

    def groups(self) -> list[list[Any]]:
        by_root: dict[object, list[object]] = {}
        for key in self._parent:
            by_root.setdefault(self.find(key), []).append(key)
        return list(by_root.values())


def connected_sets(
    nodes: Iterable[_Node], edges: Iterable[tuple[_Node, _Node]]
) -> list[set[_Node]]:
    """The connected sets of the graph (every node in one, single nodes included)."""
    components = _Components()
    for node in nodes:
        components.add(node)
    for a, b in edges:
        components.union(a, b)
    return [set(members) for members in components.groups()]


def assign_group_ids(
    components: Sequence[set[uuid.UUID]],
    old_groups: Mapping[uuid.UUID, uuid.UUID],
    group_created: Mapping[uuid.UUID, datetime],
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> list[uuid.UUID]:
    """An id for each component (of two or more images) after a rebuild: the old group it
    shares most members with keeps its id on it, each old id on one component at most
    (largest overlaps first, then older groups); the others get new ids."""
    overlaps: dict[tuple[int, uuid.UUID], int] = {}
    for index, members in enumerate(components):
        for image_id in members:
            group_id = old_groups.get(image_id)
            if group_id is not None:
                overlaps[index, group_id] = overlaps.get((index, group_id), 0) + 1
    ranked = sorted(
        overlaps.items(),
        key=lambda item: (-item[1], group_created[item[0][1]], str(item[0][1]), item[0][0]),
    )
    assigned: dict[int, uuid.UUID] = {}
    used: set[uuid.UUID] = set()
    for (index, group_id), _ in ranked:
        if index not in assigned and group_id not in used:
            assigned[index] = group_id
            used.add(group_id)
    return [assigned.get(index) or new_id() for index in range(len(components))]


# --- Recording links and merging groups ------------------------------------------------------

# The links, with the images searched marked in the same statement (one round trip less). The
# build ($6) is NULL for the current one as the statement runs (0 on a database without builds
# yet: a rebuild then counts the images as not searched).
_INSERT_LINKS = """
    WITH build AS (
        SELECT COALESCE($6::integer, (SELECT max(build) FROM duplicate_builds), 0) AS number
    ), scanned AS (
        INSERT INTO duplicate_scans (image_id, build)
        SELECT id, build.number FROM images, build WHERE id = ANY($7::uuid[])
        ON CONFLICT (image_id) DO UPDATE SET build = EXCLUDED.build
    )
    INSERT INTO duplicate_links (image_a, image_b, similarity_score, match, verification, build)
    SELECT e.a, e.b, e.score, e.match, e.verification::jsonb, build.number
    FROM unnest($1::uuid[], $2::uuid[], $3::real[], $4::text[], $5::text[])
        AS e(a, b, score, match, verification)
    CROSS JOIN build
    JOIN images AS ia ON ia.id = e.a
    JOIN images AS ib ON ib.id = e.b
    WHERE NOT EXISTS (
        SELECT 1 FROM duplicate_decisions AS d
        WHERE d.hash_a = LEAST(ia.content_hash, ib.content_hash)
          AND d.hash_b = GREATEST(ia.content_hash, ib.content_hash)
    )
    ON CONFLICT (image_a, image_b) DO UPDATE SET
        similarity_score = EXCLUDED.similarity_score, match = EXCLUDED.match,
        verification = EXCLUDED.verification, build = EXCLUDED.build
    RETURNING image_a, image_b
"""

_MARK_SCANNED = """
    INSERT INTO duplicate_scans (image_id, build)
    SELECT id, COALESCE($2::integer, (SELECT max(build) FROM duplicate_builds), 0)
    FROM images WHERE id = ANY($1::uuid[])
    ON CONFLICT (image_id) DO UPDATE SET build = EXCLUDED.build
"""


def _edges(
    found: Mapping[uuid.UUID, Sequence[DuplicateLink]],
) -> dict[tuple[uuid.UUID, uuid.UUID], DuplicateLink]:
    """Each pair once, smaller id first; a pair found from both sides keeps its better score.
    A verified link's evidence names the image it was seen from (`query_id`)."""
    edges: dict[tuple[uuid.UUID, uuid.UUID], DuplicateLink] = {}
    for image_id, links in found.items():
        for link in links:
            if link.image_id == image_id:
                continue
            a, b = sorted((image_id, link.image_id))
            known = edges.get((a, b))
            if known is None or link.similarity_score > known.similarity_score:
                # The evidence's rotation and scale go from the query's picture to the other's.
                verification = (
                    None
                    if link.verification is None
                    else {"query_id": str(image_id), **link.verification}
                )
                edges[a, b] = dataclasses.replace(link, verification=verification)
    return edges


async def record_links(
    connection: AsyncConnection,
    found: Mapping[uuid.UUID, Sequence[DuplicateLink]],
    *,
    build: int | None = None,
) -> int:
    """Record the links found for some images (all of them searched under `build`, by default
    the current one) and merge their groups; the images are marked as searched. Pairs a
    person decided about are left out, and so are images deleted meanwhile. Returns how many
    links were recorded."""
    edges = _edges(found)
    searched = list(found)

    async def write() -> int:
        if not edges:
            await connection.exec_driver_sql(_MARK_SCANNED, (searched, build))
            return 0
        # The links first, so that each linked image is locked against deletion (its foreign
        # key check) before any group row is touched.
        recorded = await _insert_links(connection, edges, build, searched)
        await _merge(connection, recorded)
        return len(recorded)

    # Without links there is nothing to merge: one statement, no lock, no transaction.
    return await _write(connection, write, transactional=bool(edges))


async def _write(
    connection: AsyncConnection, write: Callable[[], Awaitable[_T]], *, transactional: bool = True
) -> _T:
    """Run `write` in a transaction under the groups lock (or, not `transactional`, as it is),
    again from the start when it collided with a delete of one of its images (a foreign key
    violation) or with another transaction (a deadlock): it reads the state afresh."""
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            if not transactional:
                return await write()
            async with transaction(connection):
                await connection.execute(_GROUPS_LOCK)
                return await write()
        except DBAPIError as exc:
            if attempt + 1 == _WRITE_ATTEMPTS or not _retried(exc):
                raise
    raise AssertionError("unreachable")


def _retried(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRIED_SQLSTATES


async def _insert_links(
    connection: AsyncConnection,
    edges: Mapping[tuple[uuid.UUID, uuid.UUID], DuplicateLink],
    build: int | None,
    searched: Sequence[uuid.UUID],
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    pairs = list(edges)
    links = list(edges.values())
    result = await connection.exec_driver_sql(
        _INSERT_LINKS,
        (
            [a for a, _ in pairs],
            [b for _, b in pairs],
            [link.similarity_score for link in links],
            [link.match for link in links],
            [
                None if link.verification is None else json.dumps(link.verification)
                for link in links
            ],
            build,
            list(searched),
        ),
    )
    return [(row.image_a, row.image_b) for row in result]


async def _merge(connection: AsyncConnection, edges: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Put the ends of each edge in one group: a free image joins its partner's group, two
    groups merge into the largest (then oldest, then smallest id), and free images linked to
    no group start one. Runs under the groups lock."""
    if not edges:
        return
    nodes = list({node for edge in edges for node in edge})
    rows = await connection.exec_driver_sql(
        "SELECT m.image_id, m.group_id, g.size, g.created_at FROM duplicate_members AS m "
        "JOIN duplicate_groups AS g ON g.id = m.group_id WHERE m.image_id = ANY($1::uuid[])",
        (nodes,),
    )
    group_of: dict[uuid.UUID, uuid.UUID] = {}
    rank: dict[uuid.UUID, tuple[int, datetime, str]] = {}
    for row in rows:
        group_of[row.image_id] = row.group_id
        rank[row.group_id] = (-row.size, row.created_at, str(row.group_id))
    # A component's keys: ("group", id) for an image's group, ("image", id) for a free image.
    components = _Components()

    def key(node: uuid.UUID) -> tuple[str, uuid.UUID]:
        group_id = group_of.get(node)
        return ("image", node) if group_id is None else ("group", group_id)

    for a, b in edges:
        components.union(key(a), key(b))
    new_groups: list[uuid.UUID] = []
    moves: list[tuple[uuid.UUID, uuid.UUID]] = []  # (absorbed group, target group)
    joins: list[tuple[uuid.UUID, uuid.UUID]] = []  # (free image, target group)
    targets: list[uuid.UUID] = []
    for members in components.groups():
        groups = [value for kind, value in members if kind == "group"]
        free = [value for kind, value in members if kind == "image"]
        if groups:
            target = min(groups, key=rank.__getitem__)
            moves += [(group_id, target) for group_id in groups if group_id != target]
        else:
            target = uuid.uuid4()
            new_groups.append(target)
        joins += [(image_id, target) for image_id in free]
        targets.append(target)
    await _apply(connection, new_groups=new_groups, moves=moves, joins=joins)
    await _recount(connection, targets)


async def _apply(
    connection: AsyncConnection,
    *,
    new_groups: Sequence[uuid.UUID] = (),
    moves: Sequence[tuple[uuid.UUID, uuid.UUID]] = (),
    joins: Sequence[tuple[uuid.UUID, uuid.UUID]] = (),
) -> None:
    """New group rows, whole groups moved into others (and dropped), images put in groups."""
    if new_groups:
        await connection.exec_driver_sql(
            "INSERT INTO duplicate_groups (id, size) SELECT unnest($1::uuid[]), 0",
            (list(new_groups),),
        )
    if moves:
        sources = [source for source, _ in moves]
        targets = [target for _, target in moves]
        await connection.exec_driver_sql(
            "UPDATE duplicate_members AS m SET group_id = t.target "
            "FROM unnest($1::uuid[], $2::uuid[]) AS t(source, target) WHERE m.group_id = t.source",
            (sources, targets),
        )
        # A group flagged for the split check passes its flag on to the group it joins.
        await connection.exec_driver_sql(
            "UPDATE duplicate_groups SET needs_check = true WHERE id IN (SELECT t.target "
            "FROM unnest($1::uuid[], $2::uuid[]) AS t(source, target) "
            "JOIN duplicate_groups AS s ON s.id = t.source WHERE s.needs_check)",
            (sources, targets),
        )
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_groups WHERE id = ANY($1::uuid[])", (sources,)
        )
    if joins:
        await connection.exec_driver_sql(
            "INSERT INTO duplicate_members (image_id, group_id) "
            "SELECT * FROM unnest($1::uuid[], $2::uuid[]) "
            "ON CONFLICT (image_id) DO UPDATE SET group_id = EXCLUDED.group_id",
            ([image_id for image_id, _ in joins], [group_id for _, group_id in joins]),
        )


async def _recount(
    connection: AsyncConnection, group_ids: Sequence[uuid.UUID], *, checked: bool = False
) -> None:
    """Set the groups' sizes from their members (and, when they were just `checked` for a
    split, clear their flags); a group left with fewer than two members is dissolved."""
    if not group_ids:
        return
    counted = await connection.exec_driver_sql(
        "UPDATE duplicate_groups AS g SET size = c.members, updated_at = NOW(), "
        "needs_check = g.needs_check AND NOT $2 "
        "FROM (SELECT id, (SELECT count(*) FROM duplicate_members WHERE group_id = id) AS members "
        "FROM unnest($1::uuid[]) AS id) AS c WHERE g.id = c.id RETURNING g.id, g.size",
        (list(group_ids), checked),
    )
    dissolved = [row.id for row in counted if row.size < 2]
    if dissolved:
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_members WHERE group_id = ANY($1::uuid[])", (dissolved,)
        )
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_groups WHERE id = ANY($1::uuid[])", (dissolved,)
        )


# --- The upload path -------------------------------------------------------------------------


async def link_image(
    connection: AsyncConnection, image_id: uuid.UUID, options: SearchOptions, *, new: bool
) -> None:
    """Look for a stored image's links and put it in its group. Called once the upload's
    transaction has committed (see the module's docstring for why that ends concurrent copies
    in one group). For bytes already stored (not `new`), only if the current build has not
    looked yet. An image embedded with another model waits for `reembed` and a rebuild."""
    if not new:
        scanned = select(duplicate_scans.c.build).where(duplicate_scans.c.image_id == image_id)
        current = select(func.max(duplicate_builds.c.build)).scalar_subquery()
        if await connection.scalar(select(scanned.scalar_subquery() == current)):
            return
    try:
        links = await find_duplicate_links(connection, image_id, options)
    except (ImageNotFound, EmbeddingOutdated):
        return
    await record_links(connection, {image_id: links})


# --- Splits -----------------------------------------------------------------------------------


async def settle_groups(connection: AsyncConnection) -> int:
    """Split the groups flagged since members left them (deletes, decisions) into what is still
    connected; returns how many were checked. Cheap when none is flagged."""
    flagged = select(exists().where(duplicate_groups.c.needs_check))
    if not await connection.scalar(flagged):
        return 0
    return await _write(connection, lambda: _split_flagged(connection))


async def _split_flagged(connection: AsyncConnection) -> int:
    """Under the groups lock: the largest connected piece of each flagged group keeps its id
    (then the piece with the oldest upload), other pieces of two or more become new groups,
    single images leave."""
    # Row locks on the flagged groups: a delete that removes a member meanwhile flags its
    # group again after this transaction, rather than being overwritten by it.
    flagged = list(
        await connection.scalars(
            select(duplicate_groups.c.id)
            .where(duplicate_groups.c.needs_check)
            .order_by(duplicate_groups.c.id)
            .with_for_update()
        )
    )
    if not flagged:
        return 0
    rows = (
        await connection.exec_driver_sql(
            "SELECT m.image_id, m.group_id, i.upload_timestamp FROM duplicate_members AS m "
            "JOIN images AS i ON i.id = m.image_id WHERE m.group_id = ANY($1::uuid[])",
            (flagged,),
        )
    ).all()
    group_of = {row.image_id: row.group_id for row in rows}
    uploaded = {row.image_id: (row.upload_timestamp, str(row.image_id)) for row in rows}
    links = await connection.exec_driver_sql(
        "SELECT image_a, image_b FROM duplicate_links WHERE image_a = ANY($1::uuid[])",
        (list(group_of),),
    )
    edges = [
        (row.image_a, row.image_b)
        for row in links
        if group_of.get(row.image_b) == group_of[row.image_a]
    ]
    new_groups: list[uuid.UUID] = []
    joins: list[tuple[uuid.UUID, uuid.UUID]] = []
    leaving: list[uuid.UUID] = []
    for group_id in flagged:
        members = [image_id for image_id, group in group_of.items() if group == group_id]
        pieces = connected_sets(members, edges)
        pieces.sort(key=lambda piece: (-len(piece), min(uploaded[i] for i in piece)))
        for index, piece in enumerate(pieces):
            if len(piece) < 2:
                leaving += piece
            elif index > 0:
                target = uuid.uuid4()
                new_groups.append(target)
                joins += [(image_id, target) for image_id in piece]
    await _apply(connection, new_groups=new_groups, joins=joins)
    if leaving:
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_members WHERE image_id = ANY($1::uuid[])", (leaving,)
        )
    await _recount(connection, [*flagged, *new_groups], checked=True)
    return len(flagged)


# --- Reading groups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupMember:
    id: uuid.UUID
    filename: str
    content_type: str
    file_size: int
    width: int
    height: int
    upload_timestamp: datetime
    suggested_keeper: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


def keeper_order(member: GroupMember) -> tuple[int, int, datetime, str]:
    """The suggested keeper comes first: the most pixels, then the largest file, then the
    oldest upload (then the smallest id, so the order is total)."""
    return (-member.pixels, -member.file_size, member.upload_timestamp, str(member.id))


@dataclass(frozen=True)
class GroupLink:
    image_ids: tuple[uuid.UUID, uuid.UUID]
    similarity_score: float
    match: LinkMatch
    verification: dict[str, Any] | None


@dataclass(frozen=True)
class DuplicateGroup:
    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    members: list[GroupMember]  # the suggested keeper first, then in keeper order
    links: list[GroupLink] = field(default_factory=list)  # best first

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def suggested_keeper(self) -> uuid.UUID:
        return self.members[0].id

    @property
    def etag(self) -> str:
        """Names the group's members: `If-Match` on a resolve refuses a group that changed."""
        names = ",".join(sorted(str(member.id) for member in self.members))
        return f'"{hashlib.sha256(names.encode()).hexdigest()[:32]}"'


async def _load_groups(
    connection: AsyncConnection, group_ids: Sequence[uuid.UUID]
) -> list[DuplicateGroup]:
    """The groups (in the order given), each with its members and links."""
    if not group_ids:
        return []
    ids = list(group_ids)
    groups = {
        row.id: row
        for row in await connection.execute(
            select(duplicate_groups).where(duplicate_groups.c.id.in_(ids))
        )
    }
    members: dict[uuid.UUID, list[GroupMember]] = {group_id: [] for group_id in ids}
    member_rows = await connection.execute(
        select(
            duplicate_members.c.group_id,
            images.c.id,
            images.c.filename,
            images.c.content_type,
            images.c.file_size,
            images.c.width,
            images.c.height,
            images.c.upload_timestamp,
        )
        .join(images, images.c.id == duplicate_members.c.image_id)
        .where(duplicate_members.c.group_id.in_(ids))
    )
    for row in member_rows:
        members[row.group_id].append(
            GroupMember(
                row.id,
                row.filename,
                row.content_type,
                row.file_size,
                row.width,
                row.height,
                row.upload_timestamp,
            )
        )
    links: dict[uuid.UUID, list[GroupLink]] = {group_id: [] for group_id in ids}
    link_rows = await connection.execute(
        select(duplicate_members.c.group_id, duplicate_links)
        .join(duplicate_links, duplicate_links.c.image_a == duplicate_members.c.image_id)
        .where(duplicate_members.c.group_id.in_(ids))
        .order_by(duplicate_links.c.similarity_score.desc())
    )
    for row in link_rows:
        links[row.group_id].append(
            GroupLink((row.image_a, row.image_b), row.similarity_score, row.match, row.verification)
        )
    loaded = []
    for group_id in ids:
        group = groups.get(group_id)
        ordered = sorted(members[group_id], key=keeper_order)
        if group is None or len(ordered) < 2:
            continue  # dissolved meanwhile
        ordered[0] = dataclasses.replace(ordered[0], suggested_keeper=True)
        loaded.append(
            DuplicateGroup(group.id, group.created_at, group.updated_at, ordered, links[group_id])
        )
    return loaded


def _filter_conditions(where: ImageFilter) -> list[Any]:
    """A group passes when at least one of its members passes the listing's filter."""
    conditions = []
    if where.content_type is not None:
        conditions.append(images.c.content_type == where.content_type)
    if where.uploaded_after is not None:
        conditions.append(images.c.upload_timestamp >= where.uploaded_after)
    if where.uploaded_before is not None:
        conditions.append(images.c.upload_timestamp < where.uploaded_before)
    if not conditions:
        return []
    member = (
        select(duplicate_members.c.image_id)
        .join(images, images.c.id == duplicate_members.c.image_id)
        .where(duplicate_members.c.group_id == duplicate_groups.c.id, *conditions)
    )
    return [member.exists()]


async def list_groups(
    connection: AsyncConnection, *, skip: int, limit: int, where: ImageFilter = ImageFilter()
) -> tuple[list[DuplicateGroup], int]:
    """A page of groups, largest first (then oldest, then by id), and how many pass `where`."""
    conditions = [duplicate_groups.c.size >= 2, *_filter_conditions(where)]
    total = await connection.scalar(
        select(func.count()).select_from(duplicate_groups).where(*conditions)
    )
    page = await connection.scalars(
        select(duplicate_groups.c.id)
        .where(*conditions)
        .order_by(
            duplicate_groups.c.size.desc(), duplicate_groups.c.created_at, duplicate_groups.c.id
        )
        .offset(skip)
        .limit(limit)
    )
    return await _load_groups(connection, list(page)), total or 0


async def get_group(connection: AsyncConnection, group_id: uuid.UUID) -> DuplicateGroup:
    """The group; DuplicateGroupNotFound if there is none (resolved, split or merged away)."""
    loaded = await _load_groups(connection, [group_id])
    if not loaded:
        raise DuplicateGroupNotFound(group_id)
    return loaded[0]


async def groups_of(
    connection: AsyncConnection, image_ids: Collection[uuid.UUID]
) -> list[DuplicateGroup]:
    """The current groups of these images, largest first."""
    group_ids = await connection.scalars(
        select(duplicate_members.c.group_id)
        .where(duplicate_members.c.image_id.in_(list(image_ids)))
        .distinct()
    )
    groups = await _load_groups(connection, list(group_ids))
    return sorted(groups, key=lambda group: (-group.size, group.created_at, str(group.id)))


# --- Decisions ---------------------------------------------------------------------------------


async def _decide(
    connection: AsyncConnection,
    pairs: Collection[tuple[uuid.UUID, uuid.UUID]],
    decision: Decision,
) -> None:
    """Record a decision on each pair (by content hash), drop their links and flag their groups
    for the split check. Raises ImageNotFound for an id that is not stored."""
    ids = list({image_id for pair in pairs for image_id in pair})
    rows = await connection.execute(
        select(images.c.id, images.c.content_hash).where(images.c.id.in_(ids))
    )
    hashes: dict[uuid.UUID, str] = {row.id: row.content_hash for row in rows}
    for image_id in ids:
        if image_id not in hashes:
            raise ImageNotFound(image_id)
    ordered = [tuple(sorted(pair)) for pair in pairs]
    hash_pairs = [tuple(sorted((hashes[a], hashes[b]))) for a, b in ordered]

    async def write() -> None:
        await connection.exec_driver_sql(
            "INSERT INTO duplicate_decisions (hash_a, hash_b, decision) "
            "SELECT a, b, $3 FROM unnest($1::text[], $2::text[]) AS p(a, b) "
            "ON CONFLICT (hash_a, hash_b) DO UPDATE SET decision = EXCLUDED.decision, "
            "decided_at = NOW()",
            ([a for a, _ in hash_pairs], [b for _, b in hash_pairs], decision),
        )
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_links AS l USING unnest($1::uuid[], $2::uuid[]) AS p(a, b) "
            "WHERE l.image_a = p.a AND l.image_b = p.b",
            ([a for a, _ in ordered], [b for _, b in ordered]),
        )
        await connection.exec_driver_sql(
            "UPDATE duplicate_groups SET needs_check = true WHERE id IN "
            "(SELECT group_id FROM duplicate_members WHERE image_id = ANY($1::uuid[]))",
            (ids,),
        )
        await _split_flagged(connection)

    await _write(connection, write)


async def mark_not_duplicates(
    connection: AsyncConnection, pairs: Collection[tuple[uuid.UUID, uuid.UUID]]
) -> list[DuplicateGroup]:
    """Mark each pair of stored images as not duplicates: their link goes (their group splits
    if nothing else connects them) and they are never linked again, whatever the rebuilds,
    re-embeddings and re-uploads of the same bytes. Returns the images' groups now. Raises
    ImageNotFound."""
    await _decide(connection, pairs, "not_duplicates")
    return await groups_of(connection, {image_id for pair in pairs for image_id in pair})


@dataclass(frozen=True)
class Resolution:
    group_id: uuid.UUID
    kept: list[uuid.UUID]
    deleted: list[uuid.UUID]


def _if_match_allows(if_match: str | None, etag: str) -> bool:
    if if_match is None:
        return True
    given = {tag.strip() for tag in if_match.split(",")}
    return "*" in given or etag in given


async def resolve_group(
    connection: AsyncConnection,
    group_id: uuid.UUID,
    *,
    keep: Collection[uuid.UUID],
    store: ImageStore,
    if_match: str | None = None,
) -> Resolution:
    """Keep `keep` and delete the group's other members through the ordinary delete (row
    first, then the file). Kept images that stay together are recorded as `kept_both`, so the
    group does not come back. `if_match`: the group's ETag as read; a group whose members
    changed since is refused (GroupChanged). Raises DuplicateGroupNotFound, NotAGroupMember."""
    group = await get_group(connection, group_id)
    if not _if_match_allows(if_match, group.etag):
        raise GroupChanged(group_id)
    members = {member.id for member in group.members}
    strangers = [image_id for image_id in keep if image_id not in members]
    if strangers:
        raise NotAGroupMember(strangers[0], group_id)
    kept = [member.id for member in group.members if member.id in keep]
    if len(kept) > 1:
        await _decide(connection, list(combinations(kept, 2)), "kept_both")
    deleted = []
    for member in group.members:
        if member.id in keep:
            continue
        try:
            await image_records.delete_image(connection, member.id, store=store)
        except ImageNotFound:
            continue  # deleted meanwhile
        deleted.append(member.id)
    await settle_groups(connection)
    return Resolution(group_id, kept, deleted)


# --- Rebuild -----------------------------------------------------------------------------------


@dataclass
class RebuildProgress:
    build: int
    total: int  # images this run looks at
    already_checked: int  # by the stopped run this one continues (or by uploads meanwhile)
    skipped: int  # embedded with another model: `reembed` first
    checked: int = 0
    links: int = 0  # once finished
    groups: int = 0  # once finished
    finished: bool = False
    search_seconds: float = 0.0  # looking for links and recording them, batch by batch
    regroup_seconds: float = 0.0  # the final regrouping, under the groups lock


async def _start_rebuild(connection: AsyncConnection, options: SearchOptions) -> Build:
    """Continue a stopped rebuild made with the same settings, or start build n + 1."""

    async def write() -> Build:
        build = await current_build(connection, options)
        if not build.finished and build.made_with(options):
            return build
        number = build.number + 1
        await connection.execute(
            duplicate_builds.insert().values(
                build=number,
                embedding_model=options.model,
                near_duplicate_threshold=options.near_duplicate_threshold,
                verification_candidates=options.verification_candidates,
            )
        )
        return Build(
            number,
            options.model,
            options.near_duplicate_threshold,
            options.verification_candidates,
            finished=False,
        )

    return await _write(connection, write)


def _unscanned(build: int, model: str) -> Any:
    return and_(
        images.c.embedding_model == model,
        ~exists().where(
            duplicate_scans.c.image_id == images.c.id, duplicate_scans.c.build == build
        ),
    )


async def _finish_rebuild(connection: AsyncConnection, build: int) -> tuple[int, int]:
    """Drop the links of earlier builds and regroup everything from this build's links, group
    ids kept by overlap (`assign_group_ids`); returns the numbers of links and groups."""

    async def write() -> tuple[int, int]:
        await connection.execute(duplicate_links.delete().where(duplicate_links.c.build < build))
        edges = [
            (row.image_a, row.image_b)
            for row in await connection.exec_driver_sql(
                "SELECT image_a, image_b FROM duplicate_links"
            )
        ]
        old = (
            await connection.exec_driver_sql(
                "SELECT m.image_id, m.group_id, g.created_at FROM duplicate_members AS m "
                "JOIN duplicate_groups AS g ON g.id = m.group_id"
            )
        ).all()
        old_groups = {row.image_id: row.group_id for row in old}
        created = {row.group_id: row.created_at for row in old}
        components = connected_sets({node for edge in edges for node in edge}, edges)
        ids = assign_group_ids(components, old_groups, created)
        wanted = {image_id: ids[i] for i, piece in enumerate(components) for image_id in piece}
        joins = [
            (image, group) for image, group in wanted.items() if old_groups.get(image) != group
        ]
        await _apply(connection, new_groups=[g for g in ids if g not in created], joins=joins)
        leaving = [image_id for image_id in old_groups if image_id not in wanted]
        if leaving:
            await connection.exec_driver_sql(
                "DELETE FROM duplicate_members WHERE image_id = ANY($1::uuid[])", (leaving,)
            )
        kept = set(ids)
        await connection.exec_driver_sql(
            "DELETE FROM duplicate_groups WHERE NOT (id = ANY($1::uuid[]))", (list(kept),)
        )
        await _recount(connection, ids, checked=True)
        await connection.execute(
            duplicate_builds.update()
            .where(duplicate_builds.c.build == build)
            .values(finished_at=func.now())
        )
        return len(edges), len(ids)

    return await _write(connection, write)


async def rebuild_groups(
    engine: AsyncEngine,
    options: SearchOptions,
    *,
    batch_size: int = 500,
    concurrency: int = 2,
    on_progress: Callable[[RebuildProgress], None] | None = None,
) -> RebuildProgress:
    """Look for every image's links again with `options` and regroup: after a change of the
    settings a build records (`Build.made_with`). Resumable: each batch commits the links it
    found and marks its images as searched under this build, so a stopped run continues where
    it stopped. Uploads and
    deletes go on meanwhile (their links are recorded under the same build). Searches run on
    `concurrency` connections. Raises RebuildRunning when another rebuild holds the lock."""
    async with engine.connect() as control:
        if not await control.scalar(text(f"SELECT pg_try_advisory_lock({_REBUILD_LOCK})")):
            raise RebuildRunning()
        try:
            build = await _start_rebuild(control, options)
            remaining = await control.scalar(
                select(func.count())
                .select_from(images)
                .where(_unscanned(build.number, options.model))
            )
            same_model = await control.scalar(
                select(func.count())
                .select_from(images)
                .where(images.c.embedding_model == options.model)
            )
            stored = await control.scalar(select(func.count()).select_from(images))
            progress = RebuildProgress(
                build=build.number,
                total=remaining or 0,
                already_checked=(same_model or 0) - (remaining or 0),
                skipped=(stored or 0) - (same_model or 0),
            )
            started = time.monotonic()
            await _scan_all(
                engine,
                control,
                build.number,
                options,
                progress,
                batch_size,
                concurrency,
                on_progress,
            )
            progress.search_seconds = time.monotonic() - started
            progress.links, progress.groups = await _finish_rebuild(control, build.number)
            progress.regroup_seconds = time.monotonic() - started - progress.search_seconds
            progress.finished = True
            return progress
        finally:
            await control.execute(text(f"SELECT pg_advisory_unlock({_REBUILD_LOCK})"))


async def _scan_all(
    engine: AsyncEngine,
    control: AsyncConnection,
    build: int,
    options: SearchOptions,
    progress: RebuildProgress,
    batch_size: int,
    concurrency: int,
    on_progress: Callable[[RebuildProgress], None] | None,
) -> None:
    after: uuid.UUID | None = None
    searchers = [await engine.connect() for _ in range(max(1, concurrency))]
    try:
        while True:
            query = (
                select(images.c.id)
                .where(_unscanned(build, options.model))
                .order_by(images.c.id)
                .limit(batch_size)
            )
            if after is not None:
                query = query.where(images.c.id > after)
            batch = list(await control.scalars(query))
            if not batch:
                return
            found = await _search_batch(searchers, batch, options)
            await record_links(control, found, build=build)
            progress.checked += len(batch)
            after = batch[-1]
            if on_progress is not None:
                on_progress(progress)
    finally:
        for searcher in searchers:
            await searcher.close()


async def _search_batch(
    searchers: Sequence[AsyncConnection], batch: Sequence[uuid.UUID], options: SearchOptions
) -> dict[uuid.UUID, list[DuplicateLink]]:
    """The links of each image of `batch`, searched on all `searchers` at once; images deleted
    or re-embedded meanwhile are left out."""
    found: dict[uuid.UUID, list[DuplicateLink]] = {}
    pending = iter(batch)

    async def work(connection: AsyncConnection) -> None:
        for image_id in pending:
            try:
                found[image_id] = await find_duplicate_links(connection, image_id, options)
            except (ImageNotFound, EmbeddingOutdated):
                continue

    await asyncio.gather(*(work(connection) for connection in searchers))
    return found
