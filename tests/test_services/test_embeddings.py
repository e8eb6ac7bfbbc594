"""The embedders on pictures made in memory: determinism, shape, and robustness to edits."""

import io
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from app.core.config import Settings
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import HashEmbedder, PerceptualEmbedder
from tests.support.images import encode, scene

DEFAULT_THRESHOLD = Settings.model_fields["SIMILARITY_THRESHOLD"].default


def embed(data: bytes, dimension: int = 512) -> NDArray[np.float32]:
    """Through the service's own decode path, as an upload would be."""
    return analyse_image(
        data,
        allowed_formats=frozenset({"JPEG", "PNG"}),
        max_pixels=50_000_000,
        embedder=PerceptualEmbedder(dimension),
    ).embedding


def jpeg(image: Image.Image, quality: int = 90, **options: object) -> bytes:
    return encode(image, "JPEG", quality=quality, **options)


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return scene(640, 480, seed=1)


@pytest.mark.parametrize("dimension", [64, 512, 1024])
def test_perceptual_embedding_is_deterministic_unit_float32(
    original: Image.Image, dimension: int
) -> None:
    data = jpeg(original)
    first, second = embed(data, dimension), embed(data, dimension)

    assert first.shape == (dimension,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first, second)


def test_perceptual_embedding_of_a_flat_image_is_still_a_unit_vector() -> None:
    vector = embed(encode(Image.new("RGB", (50, 50), (128, 128, 128)), "PNG"))
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "resized_and_recompressed": lambda im: jpeg(im.resize((200, 150)), quality=40),
    "brighter": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.3)),
    "lower_contrast": lambda im: jpeg(ImageEnhance.Contrast(im).enhance(0.6)),
    "greyscale": lambda im: jpeg(im.convert("L")),
    "blurred": lambda im: jpeg(im.filter(ImageFilter.GaussianBlur(2))),
    "mirrored": lambda im: jpeg(ImageOps.mirror(im)),
    "cropped": lambda im: jpeg(im.crop((32, 24, 608, 456))),
    "rotated_3_degrees": lambda im: jpeg(im.rotate(3, resample=Image.Resampling.BICUBIC)),
    "png": lambda im: encode(im, "PNG"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_edited_copies_score_above_the_default_threshold(original: Image.Image, edit: str) -> None:
    score = float(embed(jpeg(original)) @ embed(EDITS[edit](original)))
    assert score >= DEFAULT_THRESHOLD


def test_unrelated_pictures_score_below_edited_copies(original: Image.Image) -> None:
    query = embed(jpeg(original))
    weakest_copy = min(float(query @ embed(make(original))) for make in EDITS.values())
    unrelated = [float(query @ embed(jpeg(scene(640, 480, seed=seed)))) for seed in range(2, 12)]

    assert max(unrelated) < weakest_copy
    assert np.median(unrelated) < DEFAULT_THRESHOLD


def test_exif_rotated_copy_scores_like_the_upright_picture(original: Image.Image) -> None:
    # The pixels stored turned a quarter left, with EXIF orientation 6 ("turn right to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = jpeg(original.rotate(90, expand=True), exif=exif.tobytes())
    plain_rotation = jpeg(original.rotate(90, expand=True))

    upright = embed(jpeg(original))
    assert float(upright @ embed(rotated)) > 0.98
    assert float(upright @ embed(rotated)) > float(upright @ embed(plain_rotation))


def test_hash_embedder_ignores_pixels() -> None:
    image = Image.new("RGB", (8, 8))
    one = HashEmbedder(512).embed(image, content_sha256=b"\x01" * 32)
    two = HashEmbedder(512).embed(image, content_sha256=b"\x02" * 32)
    assert abs(float(one @ two)) < 0.25


def test_animated_images_are_embedded_from_their_first_frame(original: Image.Image) -> None:
    frames = [original.convert("P"), scene(640, 480, seed=5).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    first_frame_only = encode(frames[0], "GIF")
    vector = analyse_image(
        buffer.getvalue(),
        allowed_formats=frozenset({"GIF"}),
        max_pixels=50_000_000,
        embedder=PerceptualEmbedder(512),
    ).embedding
    expected = analyse_image(
        first_frame_only,
        allowed_formats=frozenset({"GIF"}),
        max_pixels=50_000_000,
        embedder=PerceptualEmbedder(512),
    ).embedding
    assert float(vector @ expected) > 0.99
