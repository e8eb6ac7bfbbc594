"""Retrieval and near-duplicate quality, per edit kind and per kind of picture, for every
configuration side by side: pHash and dHash (the baselines), each embedder alone, with
near-duplicate verification, and with region vectors and verification (the service's default:
cnn + REGION_VECTORS + VERIFY_NEAR_DUPLICATES), plus two frame-robust options measured for
comparison (the query in four orientations, plain borders trimmed).

The sets (bench/edit_sets.py): the 22 real photos shipped in the scikit-image, scikit-learn and
matplotlib wheels, each with mild edits, hard edits (rotations, off-centre crops, pads, a
screenshot, a collage tile, overlays, perspective, ...), and pictures that are not photographs
(documents, screenshots of applications, logos on transparency, flat colours and gradients,
bordered pictures), 12 of each kind with 4 edits each. Every file goes through the service's
own decode path (`analyse_image`).

Each original is a query. Per (query, copy) pair, the copy is ranked against the images that do
not contain the query's original, as the service would rank it: by score (with region vectors,
a stored picture's score is its best over its global vector and its region vectors, computed
by the service's own `analyse_image(..., regions=True)`), or (with verification) verified
candidates among the best `--candidates` first. AP is 1 / that rank.
near_duplicate precision and recall count, among the best `--candidates` of each query, the
copies and the unrelated images given the label: by NEAR_DUPLICATE_THRESHOLD on the score
without verification, by verification with it.

    make install-bench && .venv/bin/python -m bench.quality
"""

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from app.core.config import Settings
from app.core.resources import create_named_embedder
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import Embedder
from app.imaging.formats import sniff_format
from app.imaging.picture import as_displayed, open_image
from app.imaging.verification import Evidence, LocalFeatures, verify
from app.services.search import REGION_SCORE_PENALTY
from bench.edit_sets import HARD_EDITS, MILD_EDITS, Sample, nonphoto_samples, photo_samples

FORMATS = frozenset({"JPEG", "PNG"})
NEAR_DUPLICATE_THRESHOLD = Settings.model_fields["NEAR_DUPLICATE_THRESHOLD"].default
CATEGORIES = ("photo", "document", "screenshot", "logo", "flat", "bordered")
PHOTO_GROUPS = {
    "mild": set(MILD_EDITS),
    "hard": set(HARD_EDITS) | {"screenshot", "collage_tile"},
}


@dataclass
class Result:
    """One configuration's outcome."""

    ap: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    labelled: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    # Per edit of a photo: copies labelled near_duplicate, copies.
    found: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def mean_ap(self, category: str, edits: set[str] | None = None) -> float:
        values = [
            v
            for (c, e), vs in self.ap.items()
            if c == category and (edits is None or e in edits)
            for v in vs
        ]
        return float(np.mean(values)) if values else float("nan")

    def precision_recall(self, categories: tuple[str, ...]) -> tuple[float, float, int]:
        """Precision, recall, false positives of the near_duplicate label."""
        tp = sum(self.labelled[c][0] for c in categories)
        fp = sum(self.labelled[c][1] for c in categories)
        relevant = sum(self.labelled[c][2] for c in categories)
        return tp / max(1, tp + fp), tp / max(1, relevant), fp


def evaluate(
    samples: list[Sample],
    similarity: NDArray[np.float64],
    *,
    candidates: int,
    label_by_score: bool,
    verifier: Callable[[int, int], Evidence | None] | None = None,
    edits_of: Callable[[Sample], bool] = lambda s: True,
) -> Result:
    result = Result()
    queries = [i for i, s in enumerate(samples) if s.edit == "original"]
    for query in queries:
        sample = samples[query]
        unrelated = np.array(
            [i for i, s in enumerate(samples) if i != query and sample.source not in s.sources]
        )
        scores = similarity[query, unrelated]
        order = np.argsort(-scores, kind="stable")
        top = unrelated[order[:candidates]]
        top_scores = scores[order[:candidates]]
        if verifier is not None:
            verified_unrelated = np.array([verifier(query, u) is not None for u in top])
        else:
            verified_unrelated = top_scores >= NEAR_DUPLICATE_THRESHOLD
        counts = result.labelled[sample.category]
        counts[1] += int(verified_unrelated.sum())
        if sample.category == "photo":
            for group in PHOTO_GROUPS:
                result.labelled[f"photo {group}"][1] += int(verified_unrelated.sum())
        for copy in (i for i, s in enumerate(samples) if i != query and sample.source in s.sources):
            score = similarity[query, copy]
            above = int(np.sum(scores > score))
            in_top = above < candidates
            if verifier is not None:
                duplicate = in_top and verifier(query, copy) is not None
                labelled_first = int(verified_unrelated.sum())
                if duplicate:
                    rank = 1 + int(np.sum(verified_unrelated & (top_scores > score)))
                else:
                    rank = (
                        1
                        + labelled_first
                        + above
                        - int(np.sum(verified_unrelated & (top_scores > score)))
                    )
            else:
                duplicate = in_top and (label_by_score and score >= NEAR_DUPLICATE_THRESHOLD)
                rank = 1 + above
            counts[2] += 1
            counts[0] += int(duplicate)
            if sample.category == "photo":
                result.found[samples[copy].edit][0] += int(duplicate)
                result.found[samples[copy].edit][1] += 1
                group = next(g for g, edits in PHOTO_GROUPS.items() if samples[copy].edit in edits)
                result.labelled[f"photo {group}"][2] += 1
                result.labelled[f"photo {group}"][0] += int(duplicate)
            if edits_of(samples[copy]):
                result.ap[sample.category, samples[copy].edit].append(1.0 / rank)
    return result


def hamming_similarity(samples: list[Sample], hasher: Callable[..., object]) -> NDArray[np.float64]:
    hashes = [hasher(decoded(s.data)) for s in samples]
    bits = np.stack([h.hash.ravel() for h in hashes]).astype(np.int32)  # type: ignore[attr-defined]
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    # Hamming distances tie often; a fixed jitter below 1 breaks ties without favouring anyone.
    jitter = np.random.default_rng(0).random(distance.shape) * 0.5
    similarity: NDArray[np.float64] = -(distance + jitter)
    return similarity


def embed_all(
    embedder: Embedder, samples: list[Sample], *, regions: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Vectors of every sample, their region vectors (samples x regions x dimension; 0 regions
    without `regions`) and the mean ms per image (decode + embed), as an upload computes
    them."""
    started = time.perf_counter()
    analysed = [
        analyse_image(
            s.data, allowed_formats=FORMATS, max_pixels=10**8, embedder=embedder, regions=regions
        )
        for s in samples
    ]
    elapsed = 1000 * (time.perf_counter() - started) / len(samples)
    vectors = np.stack([a.embedding for a in analysed]).astype(np.float64)
    parts = np.stack(
        [
            a.regions if a.regions is not None else np.zeros((0, embedder.dimension))
            for a in analysed
        ]
    ).astype(np.float64)
    return vectors, parts, elapsed


def decoded(data: bytes) -> Image.Image:
    """The picture as the service sees it (app/imaging/picture.py)."""
    image_format = sniff_format(data)
    assert image_format is not None, "the edit sets are JPEG and PNG"
    with open_image(data, image_format) as opened:
        opened.load()
        picture = as_displayed(opened)
        return picture.copy() if picture is opened else picture


def trim_borders(image: Image.Image, tolerance: int = 12) -> Image.Image:
    """The picture without plain borders (bars of the corner colours), if it has any."""
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    for corner in (grey[0, 0], grey[-1, -1]):
        content = np.abs(grey - corner) > tolerance
        rows = np.flatnonzero(content.mean(axis=1) > 0.02)
        columns = np.flatnonzero(content.mean(axis=0) > 0.02)
        if len(rows) and len(columns):
            box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
            area = (box[2] - box[0]) * (box[3] - box[1])
            if 0.2 * grey.size <= area < 0.97 * grey.size:
                image = image.crop(box)
                grey = np.asarray(image.convert("L"), dtype=np.int16)
    return image


def embed_pictures(embedder: Embedder, pictures: list[Image.Image]) -> NDArray[np.float64]:
    return np.stack([embedder.embed(p, content_sha256=b"") for p in pictures]).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["cnn", "perceptual", "hash"])
    parser.add_argument("--candidates", type=int, default=20, help="VERIFICATION_CANDIDATES")
    parser.add_argument("--no-options", action="store_true", help="skip orientations / trimming")
    arguments = parser.parse_args()
    model_dir = Path(tempfile.gettempdir()) / "image-service-bench-models"

    photos, burst = photo_samples()
    samples = photos + nonphoto_samples()
    everything = samples + burst
    print(
        f"evaluation set: {sum(s.edit == 'original' for s in samples)} originals, "
        f"{len(samples)} pictures ({len(photos)} photos and their copies); 1 burst pair"
    )

    started = time.perf_counter()
    features = [
        LocalFeatures.from_bytes(
            analyse_image(
                s.data,
                allowed_formats=FORMATS,
                max_pixels=10**8,
                embedder=create_named_embedder("hash", 512, model_dir=model_dir),
                local_features=True,
            ).local_features
            or b""
        )
        for s in everything
    ]
    features_ms = 1000 * (time.perf_counter() - started) / len(everything)
    sizes = [len(f.to_bytes()) for f in features]
    print(
        f"local features: {features_ms:.1f} ms per picture (decode + extract, hash embedder), "
        f"{np.mean(sizes) / 1024:.1f} KB mean, {max(sizes) / 1024:.1f} KB max"
    )
    cache: dict[tuple[int, int], Evidence | None] = {}

    def verifier(query: int, candidate: int) -> Evidence | None:
        if (query, candidate) not in cache:
            cache[query, candidate] = verify(features[query], features[candidate])
        return cache[query, candidate]

    results: dict[str, Result] = {}
    timings: dict[str, float] = {}
    burst_scores: dict[str, str] = {}
    n = len(samples)
    for name, hasher in (("pHash", imagehash.phash), ("dHash", imagehash.dhash)):
        similarity = hamming_similarity(samples, hasher)
        results[name] = evaluate(
            samples, similarity, candidates=arguments.candidates, label_by_score=False
        )
    burst_query = next(
        i for i, s in enumerate(samples) if s.source == "photo:14" and s.edit == "original"
    )
    for model in arguments.models:
        embedder = create_named_embedder(model, 512, model_dir=model_dir)
        # One pass as an upload with REGION_VECTORS makes both: the global vectors (the same
        # as without regions) and the region vectors.
        vectors, regions, timings[f"{model}+regions"] = embed_all(
            embedder, everything, regions=True
        )
        similarity = vectors[:n] @ vectors[:n].T
        results[model] = evaluate(
            samples, similarity, candidates=arguments.candidates, label_by_score=True
        )
        burst_score = float(vectors[burst_query] @ vectors[n])
        burst_scores[model] = f"score {burst_score:.3f}"
        if model == "hash":
            continue
        results[f"{model}+verify"] = evaluate(
            samples,
            similarity,
            candidates=arguments.candidates,
            label_by_score=True,
            verifier=verifier,
        )
        evidence = verify(features[burst_query], features[n])
        burst_scores[f"{model}+verify"] = (
            f"score {burst_score:.3f}, "
            + ("near_duplicate" if evidence else "not verified")
            + (f" ({evidence.inliers} inliers)" if evidence else "")
        )
        # Region vectors (REGION_VECTORS, the service's default): a stored picture's score is
        # its best over its global vector and its region vectors (less REGION_SCORE_PENALTY);
        # the query uses its global one.
        by_region = np.maximum(
            similarity,
            np.einsum("qd,crd->qcr", vectors[:n], regions[:n]).max(2) - REGION_SCORE_PENALTY,
        )
        results[f"{model}+regions"] = evaluate(
            samples, by_region, candidates=arguments.candidates, label_by_score=True
        )
        results[f"{model}+regions+verify"] = evaluate(
            samples,
            by_region,
            candidates=arguments.candidates,
            label_by_score=True,
            verifier=verifier,
        )
        if arguments.no_options:
            continue
        # Frame-robust options, measured for comparison (not in the service): the query in
        # four orientations (best score), and plain borders trimmed from every picture.
        originals = [i for i, s in enumerate(samples) if s.edit == "original"]
        turned = {
            i: embed_pictures(
                embedder,
                [decoded(samples[i].data).rotate(angle, expand=True) for angle in (90, 180, 270)],
            )
            for i in originals
        }
        oriented = similarity.copy()
        for i in originals:
            oriented[i] = np.maximum(oriented[i], (turned[i] @ vectors[:n].T).max(axis=0))
        results[f"{model}+orient"] = evaluate(
            samples, oriented, candidates=arguments.candidates, label_by_score=True
        )
        trimmed_vectors = embed_pictures(embedder, [trim_borders(decoded(s.data)) for s in samples])
        results[f"{model}+trim"] = evaluate(
            samples,
            trimmed_vectors @ trimmed_vectors.T,
            candidates=arguments.candidates,
            label_by_score=True,
        )

    report(results, timings, features_ms, burst_scores)


def report(
    results: dict[str, Result],
    timings: dict[str, float],
    features_ms: float,
    burst_scores: dict[str, str],
) -> None:
    names = list(results)
    width = max(12, *(len(n) + 1 for n in names))
    print("\nAP per edit of a photo (copy ranked against every unrelated picture):")
    print(f"{'edit':<22}" + "".join(f"{n:>{width}}" for n in names))
    for group, edits in (
        ("mild", MILD_EDITS),
        ("hard", {**HARD_EDITS, "screenshot": 0, "collage_tile": 0}),
    ):
        for edit in edits:
            print(
                f"{edit:<22}"
                + "".join(f"{np.mean(results[n].ap['photo', edit]):>{width}.3f}" for n in names)
            )
        print(
            f"{'mAP ' + group:<22}"
            + "".join(
                f"{results[n].mean_ap('photo', PHOTO_GROUPS[group]):>{width}.3f}" for n in names
            )
        )
    print("\nmAP per kind of picture:")
    print(f"{'category':<22}" + "".join(f"{n:>{width}}" for n in names))
    for category in CATEGORIES:
        print(
            f"{category:<22}"
            + "".join(f"{results[n].mean_ap(category):>{width}.3f}" for n in names)
        )
    print("\nnear_duplicate label, precision / recall (false positives):")
    print(f"{'category':<22}" + "".join(f"{n:>{width + 8}}" for n in names if "Hash" not in n))
    rows = [
        ("photo, mild edits", ("photo mild",)),
        ("photo, hard edits", ("photo hard",)),
        *((c, (c,)) for c in CATEGORIES),
        ("non-photo, all", CATEGORIES[1:]),
        ("all", CATEGORIES),
    ]
    for label, categories in rows:
        cells = []
        for n in names:
            if "Hash" in n:
                continue
            precision, recall, fp = results[n].precision_recall(categories)
            cells.append(f"{precision:.3f} / {recall:.3f} ({fp})")
        print(f"{label:<22}" + "".join(f"{c:>{width + 8}}" for c in cells))
    print("\nnear_duplicate recall per edit of a photo (copies labelled / copies):")
    labelling = [n for n in names if "Hash" not in n]
    print(f"{'edit':<22}" + "".join(f"{n:>{width}}" for n in labelling))
    for edit in {**MILD_EDITS, **HARD_EDITS, "screenshot": 0, "collage_tile": 0}:
        print(
            f"{edit:<22}"
            + "".join(
                f"{f'{results[n].found[edit][0]} / {results[n].found[edit][1]}':>{width}}"
                for n in labelling
            )
        )
    print(
        "\ntime per picture, in-process (decode + embed + region vectors, as an upload with "
        "REGION_VECTORS; local features are extra for +verify; without regions: "
        "bench.embedding_speed):"
    )
    for model, ms in timings.items():
        print(f"  {model:<16} {ms:7.1f} ms   (local features: {features_ms:.1f} ms more)")
    print("  (the cost of verification per search: bench/search.py)")
    print("\nburst (two shots of one scene, motorcycle_left / motorcycle_right):")
    for name, text in burst_scores.items():
        print(f"  {name:<16} {text}")
    print()
    # The default, and the same without region vectors (REGION_VECTORS=false) as its baseline.
    for label, name in (("default", "cnn+regions+verify"), ("baseline", "cnn+verify")):
        if name not in results:
            continue
        chosen = results[name]
        hard = chosen.mean_ap("photo", PHOTO_GROUPS["hard"])
        precision, recall, _ = chosen.precision_recall(("photo",))
        print(
            f"quality: {label}={name} hard_map={hard:.4f} "
            f"screenshot_ap={np.mean(chosen.ap['photo', 'screenshot']):.4f} "
            f"collage_ap={np.mean(chosen.ap['photo', 'collage_tile']):.4f} "
            f"photo_nd_precision={precision:.4f} photo_nd_recall={recall:.4f}"
        )


if __name__ == "__main__":
    main()
