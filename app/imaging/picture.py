"""The picture as displayed: the one view of a file's pixels that validation, embeddings,
thumbnails and search all use.

A viewer shows the first frame (the primary image of a HEIF file), turned as the file says
(EXIF orientation; HEIF and AVIF rotation boxes), in colour, and transparent parts over the
page behind them. `as_displayed` gives exactly that as an 8-bit RGB image, whatever the file's
mode: 16-bit and floating-point pixels are scaled to 8 bits rather than clipped, and
transparency is composited on one fixed background (white), so two files that look the same
give the same pixels.

Pure and synchronous (Pillow and numpy, no I/O): callers run it off the event loop.
"""

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
import pillow_heif
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from app.errors import ImageTooLarge, InvalidImage
from app.imaging.formats import ImageFormat

# HEIC and HEIF through libheif. Depth maps and auxiliary images are never shown: not read.
pillow_heif.register_heif_opener(depth_images=False, aux_images=False)

BACKGROUND = (255, 255, 255)  # behind transparent pixels, as on the service's page

# EXIF orientation (TIFF tag 274) -> the transposition that displays the stored pixels.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# What Pillow's decoders raise on corrupt, truncated or malformed files, besides their own
# UnidentifiedImageError (an OSError): a GIF cut inside a frame header raises IndexError, short
# reads of fixed-size fields struct.error, a TIFF without dimensions TypeError, broken HEIF
# RuntimeError.
DECODER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    RuntimeError,
    struct.error,
)


@contextmanager
def decoding(image_format: ImageFormat, max_pixels: int | None = None) -> Iterator[None]:
    """Turn what a decoder raises into the service's errors: ImageTooLarge for Pillow's
    decompression-bomb check (`max_pixels` is the limit the message names), InvalidImage for
    anything else."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        limit = f" of {max_pixels}" if max_pixels else ""
        raise ImageTooLarge(f"Image exceeds the pixel limit{limit}") from exc
    except DECODER_ERRORS as exc:
        raise InvalidImage(
            f"The file is not a valid {image_format.name} image (corrupt or truncated)"
        ) from exc


def open_image(data: bytes, image_format: ImageFormat) -> Image.Image:
    """`data` opened with the decoder of `image_format` only (no other plugin is tried).

    Metadata a viewer ignores never costs the file: PNG text chunks are left out (Pillow
    refuses one that inflates past `PngImagePlugin.MAX_TEXT_CHUNK`, or texts past
    `MAX_TEXT_MEMORY` in all), and so is an ICC profile Pillow would refuse."""
    if image_format.pillow_format == "PNG":
        data = readable_png(data)
    return Image.open(io.BytesIO(data), formats=[image_format.pillow_format])


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of a loaded image; 1 when it has none or it is unreadable.

    Read after loading: by then Pillow's TIFF decoder has turned the pixels itself (and removed
    the tag), libheif has applied a HEIF file's own rotation, and a PNG's eXIf chunk after the
    pixel data has been read."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(size: tuple[int, int], image_orientation: int) -> tuple[int, int]:
    """Width and height as displayed: orientations 5 to 8 turn by 90 degrees."""
    width, height = size
    return (height, width) if image_orientation >= 5 else (width, height)


def as_displayed(image: Image.Image) -> Image.Image:
    """A loaded image as a viewer shows it: 8-bit RGB, turned upright, transparent parts on
    BACKGROUND; `image` itself when it is all that already (no copy of a large picture), so
    use the result before closing `image`. The pixels are turned without rewriting the EXIF
    block, so an orientation is applied even when the rest of the block is malformed."""
    picture = _rgb(image)
    transposition = _TRANSPOSE.get(orientation(image))
    return picture if transposition is None else picture.transpose(transposition)


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"I", "F"}:
        grey = _eight_bit(image)
        transparency = image.info.get("transparency")
        if isinstance(transparency, int):  # a PNG's tRNS: this one grey value is transparent
            alpha = np.where(np.asarray(image) == transparency, 0, 255).astype(np.uint8)
            return _composited(Image.merge("LA", [grey, Image.fromarray(alpha)]))
        return grey.convert("RGB")
    if image.mode == "LAB":
        return _lab_to_srgb().apply(image)
    if image.has_transparency_data:
        return _composited(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _composited(image: Image.Image) -> Image.Image:
    """Straight alpha (premultiplied modes are converted) over BACKGROUND."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits as 8-bit "L", scaled rather than clipped.

    16-bit pixels keep their high byte (PNG's own 16-to-8-bit reduction). 32-bit integer and
    floating-point pixels declare no range: the smallest usual range holding every value is
    taken (0..1 for floats, 0..255, 0..65535), else the values are stretched from their
    minimum to their maximum. Non-finite values are black (NaN, -inf) or white (+inf)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        high_bytes = np.asarray(image) >> 8
        return Image.fromarray(high_bytes.astype(np.uint8))
    values: NDArray[np.float32] = np.asarray(image, dtype=np.float32)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if low >= 0 and high <= 1 and image.mode == "F":
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif low >= 0 and high <= 65535:
        scale, offset = 1 / 257, 0.0
    else:
        scale, offset = 255 / max(high - low, 1e-12), low
    scaled = np.nan_to_num((values - offset) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


@cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """CIE L*a*b* (TIFF's CIELab photometric) to sRGB, through littleCMS."""
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


_PNG_SIGNATURE_LENGTH = 8
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def readable_png(data: bytes) -> bytes:
    """The PNG without its text chunks, and without an ICC profile that Pillow would refuse
    (one inflating past MAX_TEXT_CHUNK or of an unknown compression). The rest is kept byte
    for byte; a chunk structure that runs past the end is left for the decoder to report."""
    kept: list[memoryview] = []
    view = memoryview(data)
    start, position = 0, _PNG_SIGNATURE_LENGTH
    dropped = False
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length  # length, type, data, CRC
        if end > len(data):
            break
        if kind in _PNG_TEXT_CHUNKS or (
            kind == b"iCCP" and not _readable_icc_chunk(view[position + 8 : end - 4])
        ):
            kept.append(view[start:position])
            start, dropped = end, True
        position = end
        if kind == b"IEND":
            break
    if not dropped:
        return data
    kept.append(view[start:])
    return b"".join(kept)


def _readable_icc_chunk(payload: memoryview) -> bool:
    """Whether Pillow reads this iCCP payload (name, NUL, method 0, zlib stream) without
    refusing the file."""
    name_end = bytes(payload[:80]).find(b"\0")
    if name_end < 0 or name_end + 1 >= len(payload) or payload[name_end + 1] != 0:
        return False
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(payload[name_end + 2 :], PngImagePlugin.MAX_TEXT_CHUNK)
    except zlib.error:
        return True  # Pillow keeps the file and drops the profile itself
    return not inflater.unconsumed_tail  # Pillow's own test (`_safe_zlib_decompress`)
