"""The picture as displayed (app/imaging/picture.py), on the odd-file corpus of
tests/support/odd_files.py: every file is read as a viewer shows it, scores as its plain copy,
and gets finite, storable metadata, or is refused with the right error."""

import io
import json
import zlib
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from app.errors import ServiceError
from app.imaging.analysis import AnalysedImage, analyse_image
from app.imaging.embeddings import PerceptualEmbedder
from app.imaging.formats import BY_NAME
from app.imaging.picture import as_displayed, orientation, readable_png
from tests.support.images import encode
from tests.support.odd_files import (
    ACCEPTED,
    REFUSED,
    OddFile,
    mean_difference,
    png_chunk,
    png_from_rows,
    service_picture,
    upright,
    ztxt_chunk,
)
from tests.support.odd_files import (
    BY_NAME as ODD,
)

EMBEDDER = PerceptualEmbedder(512)
EVERY_FORMAT = frozenset(BY_NAME)


def analyse(data: bytes) -> AnalysedImage:
    return analyse_image(
        data, allowed_formats=EVERY_FORMAT, max_pixels=50_000_000, embedder=EMBEDDER
    )


def embedding(data: bytes) -> NDArray[np.float32]:
    return analyse(data).embedding


def contains(record: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether `record` holds `expected` (nested dictionaries compared the same way)."""
    return all(
        contains(record.get(key, {}), value)
        if isinstance(value, dict)
        else record.get(key) == value
        for key, value in expected.items()
    )


@pytest.mark.parametrize("odd", ACCEPTED, ids=lambda odd: odd.name)
def test_an_accepted_odd_file_is_read_as_a_viewer_shows_it(odd: OddFile) -> None:
    result = analyse(odd.data)
    picture = service_picture(odd.data)

    assert result.content_type == odd.content_type
    assert (result.width, result.height) == odd.size == picture.size
    assert picture.mode == "RGB"
    assert odd.displayed is not None
    assert mean_difference(picture, odd.displayed) <= odd.tolerance
    assert contains(result.metadata, odd.metadata), result.metadata
    # Storable as it is: JSON without NaN or infinities, no NUL.
    assert "\\u0000" not in json.dumps(result.metadata, allow_nan=False)


@pytest.mark.parametrize("odd", ACCEPTED, ids=lambda odd: odd.name)
def test_an_accepted_odd_file_scores_as_its_plain_copy(odd: OddFile) -> None:
    assert odd.displayed is not None
    plain_copy = encode(odd.displayed, "PNG")
    assert float(embedding(odd.data) @ embedding(plain_copy)) >= 0.98


@pytest.mark.parametrize("odd", REFUSED, ids=lambda odd: odd.name)
def test_a_refused_odd_file_gets_its_error(odd: OddFile) -> None:
    with pytest.raises(ServiceError) as refused:
        analyse(odd.data)
    assert refused.value.code == odd.refused


def test_a_sideways_jpeg_whose_exif_pillow_cannot_rewrite_scores_as_its_upright_copy() -> None:
    sideways = ODD["jpeg_orientation_6_with_signed_rational_resolution"]
    upright_copy = encode(upright(), "JPEG", quality=95)
    result = analyse(sideways.data)

    with Image.open(io.BytesIO(sideways.data)) as stored:
        assert stored.size == (120, 160)
    assert (result.width, result.height) == (160, 120)
    assert float(embedding(sideways.data) @ embedding(upright_copy)) >= 0.99


def test_a_16_bit_greyscale_png_scores_as_its_8_bit_copy() -> None:
    sixteen_bit = ODD["png_16_bit_greyscale"]
    assert sixteen_bit.displayed is not None
    eight_bit = encode(sixteen_bit.displayed.convert("L"), "PNG")

    assert float(embedding(sixteen_bit.data) @ embedding(eight_bit)) >= 0.9999


def test_badges_differing_only_under_transparent_pixels_score_1() -> None:
    black = ODD["png_badge_black_under_transparency"].data
    white = ODD["png_badge_white_under_transparency"].data

    assert service_picture(black).tobytes() == service_picture(white).tobytes()
    assert float(embedding(black) @ embedding(white)) >= 0.9999


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # 32-bit integers: the smallest usual range holding every value.
        (np.array([[0, 128, 255]], np.int32), [0, 128, 255]),
        (np.array([[0, 257 * 128, 65535]], np.int32), [0, 128, 255]),
        (np.array([[-1000, 0, 1000]], np.int32), [0, 128, 255]),
        # Floats in 0..1 are fractions of white; NaN is black, +inf white.
        (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
        (np.array([[np.nan, 0.5, np.inf]], np.float32), [0, 128, 255]),
        (np.array([[-np.inf, 0.25, 1.0]], np.float32), [0, 64, 255]),
        (np.array([[7.0, 7.0, 7.0]], np.float32), [7, 7, 7]),
    ],
    ids=["int-8-bit", "int-16-bit", "int-signed", "float-unit", "float-non-finite",
         "float-minus-infinity", "float-flat"],
)  # fmt: skip
def test_wide_pixels_are_scaled_to_8_bits_not_clipped(
    values: NDArray[Any], expected: list[int]
) -> None:
    picture = as_displayed(Image.fromarray(values))
    assert np.asarray(picture)[0, :, 0].tolist() == expected


def test_an_unreadable_exif_block_means_no_turn() -> None:
    garbage = ODD["jpeg_garbage_exif_is_ignored"].data
    with Image.open(io.BytesIO(garbage)) as image:
        image.load()
        assert orientation(image) == 1


def test_png_metadata_pillow_would_refuse_is_dropped_and_the_rest_kept_byte_for_byte() -> None:
    rgb = np.asarray(upright(32, 24))
    plain = png_from_rows(rgb, 2)
    signature_and_header, rest = plain[:33], plain[33:]
    with_text = signature_and_header + ztxt_chunk(2 * 1024 * 1024) + rest

    assert readable_png(with_text) == plain
    assert readable_png(plain) is plain  # nothing to drop: no copy
    kept_profile = png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(b"\x00" * 64))
    with_profile = signature_and_header + kept_profile + rest
    assert readable_png(with_profile) is with_profile
    # A chunk running past the end is left for the decoder to report.
    cut = with_text[: len(signature_and_header) + 20]
    assert readable_png(cut) is cut
