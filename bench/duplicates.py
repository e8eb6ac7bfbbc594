"""Duplicate groups: how well the grouping matches the true copy sets, and what a rebuild costs.

quality: bench.edit_sets' 22 real photos, each with its ten mild edits (one copy set of 11
files per photo), plus a second shot of each photo: the same scene framed differently (cropped
to 80%, off-centre, shifted, brighter), a different picture, not a copy. Every file is uploaded
to the service (`python -m app serve` on a fresh database, default settings: the cnn embedder
with near-duplicate verification) and the groups are read back with
GET /api/v1/duplicates. Scored pairwise against the true copy sets:

- precision: of the pairs of images put in one group, the share that are copies of one picture;
- recall: of the pairs of copies of one picture, the share put in one group;
- per edit, the share of (original, edited copy) pairs in one group, and how many second shots
  ended in their scene's group (the burst case).

The baseline, in the same run and from the same files: pHash grouping, connected sets of
pairs at Hamming distance <= 10 (the default of imagededup's pHash duplicate finder).

rebuild: N clustered vectors (COPY) shaped like a collection: pictures of 1,000 kinds of
scene (two pictures of one kind score about 0.5), 15% of them with 1 to 4 copies (scoring 0.9 to
0.97 with their picture), each row with local features, so that the rebuild verifies as the
default settings do: a picture carries the features of one of the 22 real photos of
bench.edit_sets and its copies those of the photo's mild edits, their descriptors XORed with a
mask of the picture's own (distances between a picture and its copies are kept; to any other
picture they look like an unrelated photo's). Then `python -m app duplicates --rebuild` in a
process of its own: its wall time, the CPU time of the command and of PostgreSQL, and its peak
memory; images per second, and images per CPU-second (per core). The baselines, in the same
run, over a sample on one connection: the link searches alone (`find_duplicate_links`, the
rebuild's own search and verification), which says how much of the rebuild is searching, and
the vector search alone (`search_stored_image`, what a `/similar` without verification asks of
the index), which says how much of it is verification.

upload: what keeping groups current costs an upload. 240 uploads of 1-megapixel JPEGs, 8 at
a time, to this build and, with `--baseline DIR`, to another checkout (an earlier commit,
without duplicate groups) in the same run, each on a fresh database and taking turns: 200
distinct pictures and 40 edited copies of some of them (resized, re-compressed), shuffled.
Uploads per second and the server's CPU per upload.

    .venv/bin/python -m bench.duplicates quality      # after: make install-bench
    .venv/bin/python -m bench.duplicates rebuild --rows 100000
    .venv/bin/python -m bench.duplicates upload --baseline ../earlier-checkout

Uses DATABASE_URL's server if set (in a database of its own), else an embedded PostgreSQL.
"""

import argparse
import asyncio
import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import httpx
import imagehash
import numpy as np
import psutil
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageOps
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.database import apply_schema, create_engine, prepare_vector_index
from app.core.resources import SearchDefaults, create_embedder
from app.core.vector_index import search_settings
from app.imaging.verification import Keypoints, LocalFeatures, extract, verify
from app.services.duplicates import connected_sets, find_duplicate_links, link_options
from app.services.search import search_stored_image
from bench.corpus import copy_vectors
from bench.edit_sets import MILD_EDITS, Sample, encode, photo_samples, photos
from bench.harness import (
    ROOT,
    KeepAliveClient,
    fresh_database,
    latencies,
    libpq_dsn,
    postgres_server,
    running_app,
)
from bench.quality import decoded, embed_all
from bench.upload import BOUNDARY, multipart

# The rebuild's synthetic vectors are recorded under this model (its name only: no picture is
# embedded).
MODEL = "perceptual"
PHASH_MAX_DISTANCE = 10  # imagededup's default for its pHash duplicate finder
SECOND_SHOT = "second_shot"


# --- Scoring -----------------------------------------------------------------------------------


def pairs_of(sets: Iterable[Iterable[int]]) -> set[tuple[int, int]]:
    """Every pair (smaller index first) of members of a common set."""
    return {pair for members in sets for pair in combinations(sorted(members), 2)}


@dataclass(frozen=True)
class PairScores:
    precision: float
    recall: float
    grouped_pairs: int
    true_pairs: int

    def line(self) -> str:
        return (
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  "
            f"({self.grouped_pairs} pairs grouped, {self.true_pairs} true pairs)"
        )


def pairwise(predicted: set[tuple[int, int]], truth: set[tuple[int, int]]) -> PairScores:
    hits = len(predicted & truth)
    return PairScores(
        precision=hits / len(predicted) if predicted else 1.0,
        recall=hits / len(truth) if truth else 1.0,
        grouped_pairs=len(predicted),
        true_pairs=len(truth),
    )


# --- Quality ---------------------------------------------------------------------------------


def second_shot(image: Image.Image) -> Image.Image:
    """The same scene framed again: 80% of the frame, off-centre, a little brighter."""
    width, height = image.size
    box = (int(width * 0.17), int(height * 0.03), int(width * 0.97), int(height * 0.83))
    shot = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    return ImageEnhance.Brightness(shot).enhance(1.1)


def quality_samples() -> tuple[list[Sample], list[int]]:
    """The samples and each one's true set: photo n's original and mild edits are set n, its
    second shot a set of its own."""
    kept = {"original", *MILD_EDITS}
    samples = [s for s in photo_samples()[0] if s.edit in kept]
    for picture, original in zip(
        photos(), (s for s in samples if s.edit == "original"), strict=True
    ):
        shot = encode(second_shot(picture.convert("RGB")))
        scene = frozenset({f"{original.source}:{SECOND_SHOT}"})
        samples.append(Sample("photo", scene, SECOND_SHOT, shot, original.source))
    number = {s.source: n for n, s in enumerate(s for s in samples if s.edit == "original")}
    truth = [number[s.source] + (len(number) if s.edit == SECOND_SHOT else 0) for s in samples]
    return samples, truth


def phash_groups(samples: list[Sample]) -> list[set[int]]:
    hashes = [
        imagehash.phash(ImageOps.exif_transpose(Image.open(io.BytesIO(s.data)))) for s in samples
    ]
    bits = np.stack([h.hash.ravel() for h in hashes]).astype(np.int32)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    close = np.argwhere(np.triu(distance <= PHASH_MAX_DISTANCE, k=1))
    return connected_sets(range(len(samples)), [(int(a), int(b)) for a, b in close])


async def service_groups(samples: list[Sample]) -> list[set[int]]:
    """Upload every sample to a fresh service; its groups as sets of sample indexes. Samples
    with the same bytes (the greyscale copy of a greyscale photo) are one stored image: a
    group holds them all."""
    with postgres_server() as server:
        url = await fresh_database(server, "bench_duplicates_quality")
        environment = {"DATABASE_URL": url.render_as_string(hide_password=False)}
        async with (
            running_app(environment) as app,
            httpx.AsyncClient(base_url=app.url, timeout=120) as client,
        ):
            indexes_of: dict[str, list[int]] = {}
            for index, sample in enumerate(samples):
                response = await client.post(
                    "/api/v1/images/upload",
                    files={"file": (f"{index}-{sample.edit}.jpg", sample.data)},
                )
                response.raise_for_status()
                indexes_of.setdefault(response.json()["id"], []).append(index)
            groups: list[set[int]] = []
            while True:
                page = (
                    await client.get(
                        "/api/v1/duplicates", params={"skip": len(groups), "limit": 100}
                    )
                ).json()
                groups += [
                    {index for m in g["members"] for index in indexes_of[m["id"]]}
                    for g in page["items"]
                ]
                if len(groups) >= page["total"]:
                    return groups


def report_quality(
    name: str,
    groups: list[set[int]],
    samples: list[Sample],
    truth: list[int],
    *,
    per_edit: bool = True,
) -> PairScores:
    true_sets: dict[int, set[int]] = {}
    for index, label in enumerate(truth):
        true_sets.setdefault(label, set()).add(index)
    scores = pairwise(pairs_of(groups), pairs_of(true_sets.values()))
    group_of = {index: number for number, members in enumerate(groups) for index in members}
    originals = {s.source: i for i, s in enumerate(samples) if s.edit == "original"}

    def together(a: int, b: int) -> bool:
        return a in group_of and group_of.get(b) == group_of[a]

    shares = {
        edit: np.mean(
            [together(originals[s.source], i) for i, s in enumerate(samples) if s.edit == edit]
        )
        for edit in MILD_EDITS
    }
    bursts = sum(
        together(originals[s.source], i) for i, s in enumerate(samples) if s.edit == SECOND_SHOT
    )
    wrong = pairs_of(groups) - pairs_of(true_sets.values())
    burst_pairs = sum(
        samples[a].source == samples[b].source and SECOND_SHOT in (samples[a].edit, samples[b].edit)
        for a, b in wrong
    )
    print(f"{name:<10} {scores.line()}")
    print(
        f"{'':<10} wrong pairs: {burst_pairs} with a second shot of the same scene, "
        f"{len(wrong) - burst_pairs} of unrelated photos"
    )
    if per_edit:
        print(
            f"{'':<10} with their original, per edit: "
            + ", ".join(f"{edit} {share:.2f}" for edit, share in shares.items())
        )
    print(f"{'':<10} second shots grouped with their scene: {bursts} of {len(originals)}")
    return scores


async def quality() -> None:
    samples, truth = quality_samples()
    originals = sum(s.edit == "original" for s in samples)
    print(
        f"evaluation set: {originals} photos x (original + {len(MILD_EDITS)} edits) + "
        f"{originals} second shots = {len(samples)} images"
    )
    service = report_quality("service", await service_groups(samples), samples, truth)
    phash = report_quality("phash", phash_groups(samples), samples, truth)
    # What NEAR_DUPLICATE_THRESHOLD alone would give (verification off): connected sets of
    # every pair scoring at least t, from the service's model, offline (the service links the
    # 20 nearest only).
    settings = Settings.model_validate({})
    embedder = create_embedder(settings)
    vectors, _, _ = embed_all(embedder, samples)
    similarity = vectors @ vectors.T
    for threshold in (0.7, 0.8, 0.9):
        close = np.argwhere(np.triu(similarity >= threshold, k=1))
        groups = connected_sets(range(len(samples)), [(int(a), int(b)) for a, b in close])
        groups = [members for members in groups if len(members) > 1]
        report_quality(f"t={threshold:.1f}", groups, samples, truth, per_edit=False)
    print(
        f"quality: service precision={service.precision:.3f} recall={service.recall:.3f} "
        f"phash precision={phash.precision:.3f} recall={phash.recall:.3f} "
        f"recall_ratio={service.recall / phash.recall:.2f}"
    )


# --- Rebuild ---------------------------------------------------------------------------------


def collection_vectors(
    count: int, *, seed: int = 0, kinds: int = 1000, copy_share: float = 0.15
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """`count` unit vectors and each one's picture: pictures around `kinds` scene centres (two
    of one kind score ~0.5), `copy_share` of them followed by 1 to 4 copies (~0.9 to 0.97)."""
    rng = np.random.default_rng(seed)
    dimension = 512
    centres = rng.standard_normal((kinds, dimension)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    copies_per_picture = np.where(rng.random(count) < copy_share, rng.integers(1, 5, size=count), 0)
    picture_of = np.repeat(np.arange(count), 1 + copies_per_picture)[:count]
    pictures = int(picture_of[-1]) + 1
    base = centres[rng.integers(0, kinds, size=pictures)]
    base += rng.standard_normal((pictures, dimension)).astype(np.float32) / np.sqrt(dimension)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    first = np.r_[True, picture_of[1:] != picture_of[:-1]]
    spread = np.where(first, 0.0, rng.uniform(0.25, 0.45, size=count)).astype(np.float32)
    noise = rng.standard_normal((count, dimension)).astype(np.float32) / np.sqrt(dimension)
    vectors = base[picture_of] + noise * spread[:, None]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), picture_of


def feature_sources() -> list[list[LocalFeatures]]:
    """The local features of each real photo of bench.edit_sets with enough texture for
    keypoints: its original first, then its mild edits."""
    by_photo: dict[str, list[LocalFeatures]] = {}
    for sample in photo_samples()[0]:
        if sample.edit == "original" or sample.edit in MILD_EDITS:
            by_photo.setdefault(sample.source, []).append(extract(decoded(sample.data)))
    return [features for features in by_photo.values() if not features[0].low_texture]


def _masked(features: LocalFeatures, mask: NDArray[np.uint8]) -> bytes:
    def keypoints(points: Keypoints) -> Keypoints:
        return Keypoints(points.points, points.descriptors ^ mask)

    masked = LocalFeatures(
        features.width,
        features.height,
        features.original_side,
        keypoints(features.keypoints),
        keypoints(features.mirrored),
        features.tiny,
    )
    return masked.to_bytes()


def collection_features(
    picture_of: NDArray[np.int64],
    sources: list[list[LocalFeatures]],
    start: int,
    stop: int,
    *,
    seed: int = 0,
) -> list[bytes]:
    """Local features for rows `start` to `stop` of `collection_vectors`: a picture's first row
    gets a photo's features, its copies those of the photo's edits, all XORed with the
    picture's own mask."""
    masks = np.random.default_rng(seed).integers(0, 256, (int(picture_of[-1]) + 1, 32), np.uint8)
    first_row = np.searchsorted(picture_of, picture_of)  # picture_of is sorted
    features = []
    for row in range(start, stop):
        picture = int(picture_of[row])
        copy_number = row - int(first_row[row])
        variants = sources[picture % len(sources)]
        variant = variants[0 if copy_number == 0 else 1 + (picture + copy_number) % 10]
        features.append(_masked(variant, masks[picture]))
    return features


def failed_verification_ms(sources: list[list[LocalFeatures]], pairs: int = 200) -> float:
    """CPU milliseconds of one verification that fails (two unrelated pictures of the
    collection: different photos, or one photo under two masks), the common case of a link
    search."""
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 256, (2 * pairs, 32), np.uint8)
    chosen = [
        (
            LocalFeatures.from_bytes(_masked(sources[rng.integers(len(sources))][0], masks[2 * n])),
            LocalFeatures.from_bytes(
                _masked(sources[rng.integers(len(sources))][0], masks[2 * n + 1])
            ),
        )
        for n in range(pairs)
    ]
    started = time.process_time()
    found = sum(verify(a, b) is not None for a, b in chosen)
    assert found == 0, "masked pictures are unrelated"
    return (time.process_time() - started) / pairs * 1000


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU seconds used so far by a PostgreSQL server: its postmaster, the processes it runs,
    and those that have exited (counted in the postmaster's children times)."""
    root = psutil.Process(postmaster)
    times = root.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for process in root.children(recursive=True):
        try:
            child = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child.user + child.system
    return total


async def timed(
    engine: AsyncEngine,
    postmaster: int,
    image_ids: list[uuid.UUID],
    search: Callable[[AsyncConnection, uuid.UUID], Awaitable[object]],
) -> tuple[float, float]:
    """`search` for each image in turn on one connection: (wall seconds, CPU seconds of this
    process and of PostgreSQL)."""
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    pg_before = postgres_cpu_seconds(postmaster)
    started = time.monotonic()
    async with engine.connect() as connection:
        for image_id in image_ids:
            await search(connection, image_id)
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    own = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return wall, own + postgres_cpu_seconds(postmaster) - pg_before


def run_rebuild(environment: dict[str, str]) -> tuple[float, float, int, str]:
    """`python -m app duplicates --rebuild` in a process of its own: (wall seconds, its CPU
    seconds, its peak RSS in bytes, sampled every 0.2 s, its last line). The kernel's own peak
    (ru_maxrss) would count this process's memory, which the child shares until it runs the
    command."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "duplicates", "--rebuild"],
            cwd=ROOT,
            env={**os.environ, **environment},
            stderr=errors,
        )
        watched = psutil.Process(process.pid)
        peak = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, watched.memory_info().rss)
            time.sleep(0.2)
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        output = errors.read()
    wall = time.monotonic() - started
    if status != 0:
        raise RuntimeError(f"the rebuild failed: {output}")
    return wall, usage.ru_utime + usage.ru_stime, peak, output.strip().splitlines()[-1]


async def rebuild(rows: int, sample: int) -> None:
    vectors, picture_of = collection_vectors(rows)
    copies = rows - len(np.unique(picture_of))
    print(f"collection: {rows} images, {len(np.unique(picture_of))} pictures, {copies} copies")
    settings = Settings.model_validate({})
    with postgres_server() as server, tempfile.TemporaryDirectory() as data_dir:
        url = await fresh_database(server, "bench_duplicates_rebuild")
        # Index scans set up as the service's (and the command's) connections are.
        engine = create_engine(
            url,
            pool_size=2,
            max_overflow=0,
            server_settings=search_settings(settings.vector_index),
        )
        await apply_schema(engine, embedding_dimension=512)
        sources = feature_sources()
        verification_ms = failed_verification_ms(sources)
        loaded_at = time.monotonic()
        ids = []
        for start in range(0, rows, 10_000):  # the features of 10,000 rows at a time in memory
            stop = min(rows, start + 10_000)
            ids += await copy_vectors(
                libpq_dsn(url),
                vectors[start:stop],
                model=MODEL,
                local_features=collection_features(picture_of, sources, start, stop),
            )
        # Now rather than by autovacuum in the middle of a measurement; maintenance, so without
        # the statement timeout (it takes more than 2 s at 100,000 rows on a busy machine).
        maintenance = create_engine(url, pool_size=1, max_overflow=0, statement_timeout=None)
        async with maintenance.connect() as connection:
            await connection.execute(text("VACUUM ANALYZE images"))
        await maintenance.dispose()
        print(f"loaded with COPY in {time.monotonic() - loaded_at:.1f} s")
        await prepare_vector_index(url, settings)
        options = link_options(SearchDefaults.from_settings(settings), MODEL)
        async with engine.connect() as connection:
            backend = await connection.scalar(text("SELECT pg_backend_pid()"))
            postmaster = psutil.Process(backend).ppid()

        # The baselines, over a sample, on one connection: the link searches alone, and the
        # vector search alone.
        chosen = [
            ids[int(n)]
            for n in np.random.default_rng(1).choice(rows, size=min(sample, rows), replace=False)
        ]

        async def links(connection: AsyncConnection, image_id: uuid.UUID) -> object:
            return await find_duplicate_links(connection, image_id, options)

        async def vector_search(connection: AsyncConnection, image_id: uuid.UUID) -> object:
            return await search_stored_image(connection, image_id, options)

        search_wall, search_cpu = await timed(engine, postmaster, chosen, links)
        vector_wall, vector_cpu = await timed(engine, postmaster, chosen, vector_search)
        await engine.dispose()

        pg_before = postgres_cpu_seconds(postmaster)
        wall, command_cpu, peak_rss, summary = run_rebuild(
            {
                "DATABASE_URL": url.render_as_string(hide_password=False),
                "DATA_DIR": data_dir,
                "EMBEDDING_MODEL": MODEL,
            }
        )
        pg_after = postgres_cpu_seconds(postmaster)
        pg_cpu = pg_after - pg_before

        engine = create_engine(url, pool_size=1, max_overflow=0)
        async with engine.connect() as connection:
            members = (
                await connection.execute(text("SELECT image_id, group_id FROM duplicate_members"))
            ).all()
        await engine.dispose()

    position = {image_id: n for n, image_id in enumerate(ids)}
    grouped: dict[uuid.UUID, set[int]] = {}
    for image_id, group_id in members:
        grouped.setdefault(group_id, set()).add(position[image_id])
    truth: dict[int, set[int]] = {}
    for index, picture in enumerate(picture_of):
        truth.setdefault(int(picture), set()).add(index)
    scores = pairwise(pairs_of(grouped.values()), pairs_of(truth.values()))

    cores = os.cpu_count() or 1
    search_rate = len(chosen) / search_cpu
    vector_rate = len(chosen) / vector_cpu
    rebuild_rate = rows / (command_cpu + pg_cpu)
    print(summary)
    print(f"a verification that fails: {verification_ms:.2f} ms of CPU")
    print(
        f"link searches alone ({len(chosen)} images, 1 connection): "
        f"{len(chosen) / search_wall:.0f} images/s, {search_rate:.0f} images per CPU-second"
    )
    print(
        f"vector searches alone ({len(chosen)} images, 1 connection): "
        f"{len(chosen) / vector_wall:.0f} images/s, {vector_rate:.0f} images per CPU-second"
    )
    print(
        f"rebuild ({rows} images): {wall:.1f} s wall, {rows / wall:.0f} images/s on {cores} "
        f"cores; CPU {command_cpu:.1f} s command + {pg_cpu:.1f} s PostgreSQL = "
        f"{rows / (command_cpu + pg_cpu):.0f} images per CPU-second; peak RSS of the command "
        f"{peak_rss / 2**20:.0f} MiB"
    )
    print(f"grouping against the true copy sets: {scores.line()}")
    print(
        f"rebuild: rows={rows} images_per_core_second={rebuild_rate:.0f} "
        f"search_only_per_core_second={search_rate:.0f} ratio={rebuild_rate / search_rate:.2f} "
        f"vector_search_per_core_second={vector_rate:.0f} "
        f"failed_verification_ms={verification_ms:.2f} "
        f"wall_s={wall:.1f} peak_rss_mib={peak_rss / 2**20:.0f} "
        f"precision={scores.precision:.3f} recall={scores.recall:.3f}"
    )


# --- Upload --------------------------------------------------------------------------------


def upload_files(distinct: int = 200, copies: int = 40) -> list[bytes]:
    """1-megapixel JPEGs: `distinct` unrelated pictures, then `copies` edited copies of some
    of them; shuffled (the same order every run)."""
    rng = np.random.default_rng(7)
    pictures = []
    for _ in range(distinct):
        cells = rng.integers(0, 256, size=(27, 36, 3), dtype=np.uint8)
        pictures.append(Image.fromarray(cells).resize((1155, 866), Image.Resampling.BICUBIC))
    files = []
    for picture in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    for number in range(copies):
        copy = pictures[number % distinct].resize((770, 577))
        buffer = io.BytesIO()
        copy.save(buffer, format="JPEG", quality=60 + number % 30)
        files.append(buffer.getvalue())
    order = rng.permutation(len(files))
    return [files[index] for index in order]


async def upload(baseline: Path | None, rounds: int) -> None:
    bodies = [multipart(data, f"{n}.jpg") for n, data in enumerate(upload_files())]
    checkouts = {"this build": ROOT} | ({"baseline": baseline} if baseline else {})
    rates: dict[str, list[float]] = {name: [] for name in checkouts}
    cpu: dict[str, list[float]] = {name: [] for name in checkouts}
    with postgres_server() as server:
        for round_number in range(rounds):
            for number, (name, checkout) in enumerate(checkouts.items()):
                url = await fresh_database(server, f"bench_duplicates_upload_{number}")
                environment = {
                    "DATABASE_URL": url.render_as_string(hide_password=False),
                    "WORKERS": "2",
                }
                async with (
                    # Each start builds the cnn model's session: minutes on a busy machine.
                    running_app(environment, checkout, ready_within=600) as app,
                    KeepAliveClient(app.url, 8) as client,
                ):

                    async def send(index: int, client: KeepAliveClient = client) -> object:
                        status, body = await client.request(
                            "POST",
                            "/api/v1/images/upload",
                            bodies[index],
                            f"multipart/form-data; boundary={BOUNDARY}",
                        )
                        assert status == 201, body
                        return body

                    cpu_before = app.cpu_seconds()
                    started = time.perf_counter()
                    await latencies(send, len(bodies), 8)
                    rates[name].append(len(bodies) / (time.perf_counter() - started))
                    cpu[name].append((app.cpu_seconds() - cpu_before) / len(bodies) * 1000)
                print(
                    f"round {round_number + 1} {name}: {rates[name][-1]:.1f} uploads/s, "
                    f"server CPU {cpu[name][-1]:.1f} ms/upload",
                    flush=True,
                )
    ours = float(np.median(rates["this build"]))
    line = f"upload: uploads_per_s={ours:.1f} server_cpu_ms={np.median(cpu['this build']):.1f}"
    if baseline:
        theirs = float(np.median(rates["baseline"]))
        line += (
            f" baseline_uploads_per_s={theirs:.1f} "
            f"baseline_server_cpu_ms={np.median(cpu['baseline']):.1f} ratio={ours / theirs:.2f}"
        )
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="part", required=True)
    commands.add_parser("quality", help="grouping against true copy sets, pHash as baseline")
    rebuild_parser = commands.add_parser("rebuild", help="a rebuild at scale: time, CPU, memory")
    rebuild_parser.add_argument("--rows", type=int, default=100_000)
    rebuild_parser.add_argument(
        "--sample", type=int, default=5000, help="images of the search-only baseline"
    )
    upload_parser = commands.add_parser("upload", help="what groups cost an upload, A/B")
    upload_parser.add_argument(
        "--baseline", type=Path, help="another checkout of this project (with its .venv)"
    )
    upload_parser.add_argument("--rounds", type=int, default=3, help="turns of each build")
    arguments = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if arguments.part == "quality":
        asyncio.run(quality())
    elif arguments.part == "rebuild":
        asyncio.run(rebuild(arguments.rows, arguments.sample))
    else:
        asyncio.run(upload(arguments.baseline, arguments.rounds))


if __name__ == "__main__":
    main()
