"""Near-duplicate verification on pictures made in memory: what it accepts, with what evidence,
and what it refuses."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.imaging import verification
from app.imaging.verification import LocalFeatures, extract, verify
from tests.support.images import scene, screenshot_of, text_page


def features(image: Image.Image) -> LocalFeatures:
    """Through serialisation, as the service stores and reads them."""
    return LocalFeatures.from_bytes(extract(image).to_bytes())


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return scene(640, 480, seed=1)


def test_features_survive_serialisation_and_stay_within_the_documented_size(
    original: Image.Image,
) -> None:
    found = extract(original)
    data = found.to_bytes()
    back = LocalFeatures.from_bytes(data)

    assert len(found.keypoints) == verification.MAX_KEYPOINTS
    assert len(data) <= 28_431
    assert np.array_equal(back.keypoints.descriptors, found.keypoints.descriptors)
    assert np.allclose(back.keypoints.points, found.keypoints.points, atol=1 / 16)
    assert (back.width, back.height) == (512, 384)


def test_bytes_that_are_not_features_are_refused() -> None:
    with pytest.raises(ValueError, match="local features"):
        LocalFeatures.from_bytes(b"XYZ" + bytes(8))


@pytest.mark.parametrize(
    ("edit", "rotation", "scale", "mirrored"),
    [
        (lambda im: im.resize((320, 240)), 0.0, 0.5, False),
        (lambda im: im.transpose(Image.Transpose.ROTATE_90), 90.0, 1.0, False),
        (lambda im: im.crop((0, 0, 450, 340)), 0.0, 1.0, False),
        (ImageOps.mirror, 0.0, 1.0, True),
        (lambda im: screenshot_of(im), 0.0, 768 / 640, False),
    ],
    ids=["half_size", "rotated_90", "cropped_to_half", "mirrored", "in_a_screenshot"],
)
def test_edited_copies_are_verified_with_their_transform(
    original: Image.Image, edit: object, rotation: float, scale: float, mirrored: bool
) -> None:
    assert callable(edit)
    evidence = verify(features(original), features(edit(original)))

    assert evidence is not None
    assert evidence.transform == "similarity"
    assert evidence.mirrored is mirrored
    assert evidence.inliers >= verification.MIN_INLIERS
    assert abs((evidence.rotation - rotation + 180) % 360 - 180) < 3
    assert evidence.scale == pytest.approx(scale, rel=0.08)


def test_unrelated_pictures_of_the_same_kind_are_not_verified(original: Image.Image) -> None:
    query = features(original)
    assert all(verify(query, features(scene(640, 480, seed=seed))) is None for seed in range(2, 8))


def test_two_pages_of_text_are_not_copies_but_a_resized_page_is() -> None:
    letter, other = features(text_page(1)), features(text_page(2))
    smaller = features(text_page(1).resize((420, 560), Image.Resampling.LANCZOS))

    assert verify(letter, other) is None
    assert verify(letter, smaller) is not None


def test_flat_colours_are_compared_by_appearance() -> None:
    black, white = Image.new("RGB", (200, 200)), Image.new("RGB", (200, 200), (255, 255, 255))
    black_copy = features(Image.new("RGB", (90, 60)))

    assert features(black).low_texture
    assert verify(features(black), features(white)) is None
    evidence = verify(features(black), black_copy)
    assert evidence is not None
    assert (evidence.transform, evidence.inliers) == ("appearance", 0)


def test_a_textured_picture_is_never_the_copy_of_a_flat_one(original: Image.Image) -> None:
    grey = Image.new("RGB", (640, 480), (128, 128, 128))
    assert verify(features(grey), features(original)) is None
    assert verify(features(original), features(grey)) is None


def test_transparent_parts_are_seen_on_white() -> None:
    badge = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    badge.paste(scene(120, 120, seed=3), (40, 40))
    black_under = badge.copy()
    white_under = Image.new("RGBA", (200, 200), (255, 255, 255, 0))
    white_under.paste(scene(120, 120, seed=3), (40, 40))

    assert np.array_equal(extract(black_under).tiny, extract(white_under).tiny)


def test_a_strip_too_thin_for_keypoints_is_compared_by_its_appearance() -> None:
    rng = np.random.default_rng(5)
    strip = Image.fromarray(rng.integers(0, 256, (1, 3000, 3), dtype=np.uint8))

    found = features(strip)

    assert found.low_texture and len(found.keypoints) == 0
    evidence = verify(found, features(strip.copy()))
    assert evidence is not None and evidence.transform == "appearance"
