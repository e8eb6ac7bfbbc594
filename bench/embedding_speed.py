"""Time per 1-megapixel JPEG: the whole validate + decode + embed path for each embedder, with
and without the local features near-duplicate verification stores, then with the region
vectors too (REGION_VECTORS), and the embedding step alone. The `hash` embedder does no pixel
work, so its time is the baseline cost of validating and decoding; the difference is what an
embedder adds. The service's default is `cnn` with local features and region vectors; the
previous default was `cnn` with local features (REGION_VECTORS=false).

    .venv/bin/python -m bench.embedding_speed
"""

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from app.core.resources import create_named_embedder
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import EMBEDDING_MODELS

REPEATS = 30


def one_megapixel_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    picture = Image.fromarray(noise).resize((1155, 866)).filter(ImageFilter.GaussianBlur(3))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def median_ms(run: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(model: str, data: bytes) -> None:
    embedder = create_named_embedder(
        model, 512, model_dir=Path(tempfile.gettempdir()) / "image-service-bench-models"
    )
    decoded = Image.open(io.BytesIO(data))
    decoded.draft("RGB", (embedder.decode_side, embedder.decode_side))
    decoded.load()
    formats = frozenset({"JPEG"})
    total = median_ms(
        lambda: analyse_image(data, allowed_formats=formats, max_pixels=10**8, embedder=embedder)
    )
    with_features = median_ms(
        lambda: analyse_image(
            data,
            allowed_formats=formats,
            max_pixels=10**8,
            embedder=embedder,
            local_features=True,
        )
    )
    with_regions = median_ms(
        lambda: analyse_image(
            data,
            allowed_formats=formats,
            max_pixels=10**8,
            embedder=embedder,
            local_features=True,
            regions=True,
        )
    )
    alone = median_ms(lambda: embedder.embed(decoded, content_sha256=b"\0" * 32))
    print(
        f"embedding_speed: model={model} total_ms={total:.2f} "
        f"with_local_features_ms={with_features:.2f} "
        f"with_local_features_and_regions_ms={with_regions:.2f} "
        f"regions/without={with_regions / with_features:.2f} embed_ms={alone:.2f}"
    )


def main() -> None:
    data = one_megapixel_jpeg()
    for model in EMBEDDING_MODELS:
        measure(model, data)


if __name__ == "__main__":
    main()
