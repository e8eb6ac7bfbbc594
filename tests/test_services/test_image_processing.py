"""The pure image work: format sniffing, metadata, and the hash embedder."""

from typing import get_args

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import HashEmbedder, create_embedder
from app.imaging.formats import FORMATS, ContentType, sniff_format
from app.services.ingest import safe_filename
from tests.support.images import encode, jpeg_bytes, photo, png_bytes

ALL_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP"})


def analyse(data: bytes, *, max_pixels: int = 50_000_000, formats: frozenset[str] = ALL_FORMATS):  # type: ignore[no-untyped-def]
    return analyse_image(
        data, allowed_formats=formats, max_pixels=max_pixels, embedder=HashEmbedder(512)
    )


def test_hash_embedding_is_deterministic_normalised_float32() -> None:
    data = jpeg_bytes()
    first, second = analyse(data).embedding, analyse(data).embedding

    assert first.dtype == np.float32
    assert first.shape == (512,)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first, second)


def test_hash_embedding_depends_on_bytes_only() -> None:
    a = analyse(jpeg_bytes(seed=1)).embedding
    b = analyse(jpeg_bytes(seed=2)).embedding
    # Independent Gaussian directions in 512-d: cosine close to 0.
    assert abs(float(a @ b)) < 0.25


def test_create_embedder_rejects_unknown_models() -> None:
    assert create_embedder("hash", 64).dimension == 64
    with pytest.raises(ValueError, match="unknown embedding model"):
        create_embedder("magic", 512)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(), "JPEG"),
        (png_bytes(), "PNG"),
        (encode(photo(), "GIF"), "GIF"),
        (encode(photo(), "BMP"), "BMP"),
        (encode(photo(), "TIFF"), "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (encode(photo(), "WEBP"), "WEBP"),
        (encode(photo(), "AVIF"), "AVIF"),
        (encode(photo(), "HEIF"), "HEIC"),
        # Brands decide, major or compatible; AVIF wins over the generic HEIF brand.
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "AVIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00mif1", "HEIF"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", None),
        # A brand beyond the box's own size is not the file's.
        (b"\x00\x00\x00\x10ftypqt  \x00\x00\x00\x00heic", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
    ],
)
def test_sniff_format_reads_magic_numbers(data: bytes, expected: str | None) -> None:
    sniffed = sniff_format(data)
    assert (sniffed.name if sniffed else None) == expected


def test_content_type_literal_lists_every_format_of_the_table() -> None:
    assert set(get_args(ContentType)) == {image_format.content_type for image_format in FORMATS}


def test_analyse_reports_format_size_and_hash() -> None:
    data = png_bytes(30, 20)
    result = analyse(data)

    assert (result.format, result.content_type, result.extension) == ("PNG", "image/png", ".png")
    assert (result.width, result.height) == (30, 20)
    assert len(result.content_hash) == 64


def test_analyse_rejects_formats_not_allowed() -> None:
    with pytest.raises(UnsupportedImageFormat):
        analyse(encode(photo(), "GIF"), formats=frozenset({"JPEG", "PNG"}))


def test_analyse_checks_pixels_before_decoding() -> None:
    # 20000 x 20000 of one colour is a small PNG; decoding it as RGB would take 1.2 GB.
    huge = encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(ImageTooLarge):
        analyse(huge)


def test_analyse_rejects_truncated_jpeg() -> None:
    with pytest.raises(InvalidImage):
        analyse(jpeg_bytes(300, 300)[:-400])


def test_broken_exif_does_not_cost_the_upload() -> None:
    data = jpeg_bytes()
    # An APP1 "Exif" segment whose TIFF header is garbage, inserted after the SOI marker.
    payload = b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    result = analyse(data[:2] + segment + data[2:])
    assert "exif" not in result.metadata


def test_a_truncated_animated_gif_is_invalid_or_read_as_its_complete_frames() -> None:
    frames = [photo(48, 32, seed=seed) for seed in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first_frame_end = len(encode(frames[0], "GIF"))

    outcomes: list[str | int] = []
    for cut in range(first_frame_end - 40, len(data) - 1, 7):
        try:
            outcomes.append(analyse(data[:cut]).metadata["frames"])
        except InvalidImage:
            outcomes.append("invalid")

    # A cut inside a frame is refused; a cut after a whole frame reads the frames before it.
    assert set(outcomes) == {"invalid", 2, 3}
    counts = [outcome for outcome in outcomes if outcome != "invalid"]
    assert counts == sorted(counts)


def test_animated_gif_counts_frames() -> None:
    frames = [photo(seed=seed) for seed in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert analyse(data).metadata["frames"] == 3


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("holiday.jpg", "holiday.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\cat.png", "cat.png"),
        ("bad\x00name\x1f.jpg", "badname.jpg"),
        ("", "image.jpg"),
        (None, "image.jpg"),
        ("..", "image.jpg"),
        ("a" * 300 + ".jpg", "a" * 255),
    ],
)
def test_safe_filename(given: str | None, expected: str) -> None:
    assert safe_filename(given, ".jpg") == expected
