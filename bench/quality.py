"""Retrieval quality of the embedders on real photographs, against pHash.

The photos are the ones shipped inside the scikit-image, scikit-learn and matplotlib wheels
(requirements-bench.txt). Each gets edited copies; every original is then used as a query
against all images, and the ranking is scored:

- mAP: mean average precision, the copies of the query being the relevant images;
- recall@10: the share of those copies found among the ten best;
- per edit: each copy ranked against the images unrelated to its original.

Every image goes through the service's own decode path (`analyse_image`). Run:

    .venv/bin/python -m bench.quality            # after: pip install -r requirements-bench.txt
"""

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from app.imaging.analysis import analyse_image
from app.imaging.embeddings import EMBEDDING_MODELS, create_embedder

PHOTOS = {
    "skimage": (
        "data",
        [
            "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
            "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
            "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
            "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
        ],
    ),
    "sklearn": ("datasets/images", ["china.jpg", "flower.jpg"]),
    "matplotlib": ("mpl-data/sample_data", ["grace_hopper.jpg"]),
}  # fmt: skip


def _watermark(image: Image.Image) -> Image.Image:
    marked = image.convert("RGBA")
    overlay = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = marked.size
    box = (int(width * 0.55), int(height * 0.8), int(width * 0.97), int(height * 0.95))
    draw.rectangle(box, fill=(255, 255, 255, 140))
    draw.text((box[0] + 6, box[1] + 4), "(c) SAMPLE PHOTO", fill=(0, 0, 0, 220))
    return Image.alpha_composite(marked, overlay).convert("RGB")


def _crop(image: Image.Image, keep: float) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * (1 - keep) / 2), int(height * (1 - keep) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "jpeg_q25": lambda im: im,  # the edit is the encoding, see _encode
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.35),
    "low_contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.6),
    "greyscale": lambda im: im.convert("L"),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "crop_80": lambda im: _crop(im, 0.8),
    "rotate_5": lambda im: im.rotate(5, resample=Image.Resampling.BICUBIC, expand=False),
    "mirror": ImageOps.mirror,
    "watermark": _watermark,
}


@dataclass(frozen=True)
class Sample:
    source: int  # index of the original photo
    edit: str  # "original" or an EDITS key
    data: bytes


def _encode(image: Image.Image, edit: str) -> bytes:
    buffer = io.BytesIO()
    quality = 25 if edit == "jpeg_q25" else 92
    image.convert("RGB" if image.mode not in {"L", "RGB"} else image.mode).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def photo_paths() -> list[Path]:
    paths = []
    for package, (folder, names) in PHOTOS.items():
        spec = find_spec(package)
        if spec is None or spec.origin is None:
            sys.exit(f"{package} is missing: pip install -r requirements-bench.txt")
        paths += [Path(spec.origin).parent / folder / name for name in names]
    return paths


def build_samples() -> list[Sample]:
    samples = []
    for index, path in enumerate(photo_paths()):
        with Image.open(path) as opened:
            original = opened.convert("RGB") if opened.mode not in {"L", "RGB"} else opened.copy()
        samples.append(Sample(index, "original", _encode(original, "original")))
        for edit, apply in EDITS.items():
            samples.append(Sample(index, edit, _encode(apply(original), edit)))
    return samples


def embed_all(model: str, samples: list[Sample]) -> NDArray[np.float32]:
    embedder = create_embedder(model, 512)
    formats = frozenset({"JPEG", "PNG"})
    return np.stack(
        [
            analyse_image(
                s.data, allowed_formats=formats, max_pixels=10**8, embedder=embedder
            ).embedding
            for s in samples
        ]
    )


def phash_similarity(samples: list[Sample]) -> NDArray[np.float64]:
    hashes = [
        imagehash.phash(ImageOps.exif_transpose(Image.open(io.BytesIO(s.data)))) for s in samples
    ]
    bits = np.stack([h.hash.ravel() for h in hashes]).astype(np.int32)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    # Hamming distances tie often; a fixed jitter below 1 breaks ties without favouring anyone.
    jitter = np.random.default_rng(0).random(distance.shape) * 0.5
    similarity: NDArray[np.float64] = -(distance + jitter)
    return similarity


@dataclass
class Scores:
    map: float
    recall_at_10: float
    per_edit_ap: dict[str, float]
    per_edit_recall: dict[str, float]


def score(similarity: NDArray[np.float64], samples: list[Sample]) -> Scores:
    sources = np.array([s.source for s in samples])
    edits = np.array([s.edit for s in samples])
    queries = [i for i, s in enumerate(samples) if s.edit == "original"]
    aps, recalls = [], []
    edit_ap: dict[str, list[float]] = {edit: [] for edit in EDITS}
    edit_recall: dict[str, list[float]] = {edit: [] for edit in EDITS}
    for query in queries:
        others = np.array([i for i in range(len(samples)) if i != query])
        order = others[np.argsort(-similarity[query, others], kind="stable")]
        relevant = sources[order] == sources[query]
        hits = np.cumsum(relevant)
        ranks = np.flatnonzero(relevant) + 1
        aps.append(float(np.mean(hits[relevant] / ranks)))
        recalls.append(float(relevant[:10].sum() / relevant.sum()))
        top10 = set(order[:10].tolist())
        unrelated = sources[order] != sources[query]
        for edit in EDITS:
            copy = int(np.flatnonzero((sources == sources[query]) & (edits == edit))[0])
            rank = 1 + int(np.sum(similarity[query, order[unrelated]] > similarity[query, copy]))
            edit_ap[edit].append(1.0 / rank)
            edit_recall[edit].append(float(copy in top10))
    return Scores(
        map=float(np.mean(aps)),
        recall_at_10=float(np.mean(recalls)),
        per_edit_ap={edit: float(np.mean(v)) for edit, v in edit_ap.items()},
        per_edit_recall={edit: float(np.mean(v)) for edit, v in edit_recall.items()},
    )


def distributions(
    similarity: NDArray[np.float64], samples: list[Sample]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Scores of (original, its edited copy) pairs and of (original, unrelated image) pairs."""
    copies: list[float] = []
    unrelated: list[float] = []
    for query, sample in enumerate(samples):
        if sample.edit != "original":
            continue
        for other, candidate in enumerate(samples):
            if other == query:
                continue
            (copies if candidate.source == sample.source else unrelated).append(
                similarity[query, other]
            )
    return np.array(copies), np.array(unrelated)


def available(model: str) -> bool:
    return model != "cnn" or find_spec("torch") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="*", default=[m for m in EMBEDDING_MODELS if available(m)]
    )
    arguments = parser.parse_args()

    samples = build_samples()
    originals = sum(s.edit == "original" for s in samples)
    print(f"evaluation set: {originals} photos x (original + {len(EDITS)} edits) = {len(samples)}")
    phash = score(phash_similarity(samples), samples)
    results = {"phash": phash}
    for model in arguments.models:
        vectors = embed_all(model, samples).astype(np.float64)
        similarity = vectors @ vectors.T
        results[model] = score(similarity, samples)
        copies, unrelated = distributions(similarity, samples)
        pct = [0, 5, 50, 95, 100]
        print(
            f"{model}: edited copies p0/p5/p50/p95/p100 = "
            + " / ".join(f"{v:.3f}" for v in np.percentile(copies, pct))
        )
        print(
            f"{model}: unrelated      p0/p5/p50/p95/p100 = "
            + " / ".join(f"{v:.3f}" for v in np.percentile(unrelated, pct))
            + f"   p99 = {np.percentile(unrelated, 99):.3f}"
        )
        print(
            f"{model}: share >= t (copies / unrelated): "
            + ", ".join(
                f"{t:.2f}: {np.mean(copies >= t):.1%} / {np.mean(unrelated >= t):.2%}"
                for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
            )
        )

    names = list(results)
    print()
    print(f"{'edit':<14}" + "".join(f"{n + ' AP':>16}{'R@10':>7}" for n in names))
    for edit in EDITS:
        print(
            f"{edit:<14}"
            + "".join(
                f"{results[n].per_edit_ap[edit]:>16.3f}{results[n].per_edit_recall[edit]:>7.2f}"
                for n in names
            )
        )
    print(
        f"{'overall':<14}"
        + "".join(f"{results[n].map:>16.3f}{results[n].recall_at_10:>7.2f}" for n in names)
    )
    print()
    for model in arguments.models:
        ratio = results[model].map / phash.map
        print(
            f"quality: model={model} map={results[model].map:.4f} "
            f"phash_map={phash.map:.4f} ratio={ratio:.3f}"
        )


if __name__ == "__main__":
    main()
