"""The one table of image formats the service knows: magic numbers, content type, extensions.

Light on purpose (no Pillow): the command line's client reads it to tell images from other
files. A format is always decided from the bytes; filenames and declared content types are not
trusted. Adding a format is one row here (plus its `ContentType` literal, checked by a test).
"""

import re
from dataclasses import dataclass
from typing import Literal

# Enough of a file's start to tell its format: ISO-BMFF files (AVIF, HEIC) list their brands in
# an `ftyp` box of a few dozen bytes.
SNIFF_BYTES = 256


@dataclass(frozen=True)
class ImageFormat:
    name: str  # the service's name for it (the `format` of a stored image)
    content_type: str
    extensions: tuple[str, ...]  # the first is used for stored files
    # A regular expression the file's first bytes match (its magic number).
    magic: bytes = b""
    # ISO base media files (ISO/IEC 14496-12) start with an `ftyp` box naming the file's brands
    # (a major brand, then compatible ones); any of these brands names this format.
    brands: frozenset[bytes] = frozenset()
    decoder: str = ""  # Pillow's plugin for it, when its name differs from `name`
    always_allowed: bool = False  # accepted whatever ALLOWED_EXTENSIONS says

    @property
    def pillow_format(self) -> str:
        return self.decoder or self.name


# Brand lists: AVIF from the AV1 Image File Format specification, HEIC and HEIF from
# ISO/IEC 23008-12 (HEVC-coded images and sequences; `mif1`/`msf1` are the generic HEIF
# brands). A file naming both AVIF and HEIF brands is AVIF: the table is read in order.
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "image/jpeg", (".jpg", ".jpeg"), rb"\xff\xd8\xff", always_allowed=True),
    ImageFormat("PNG", "image/png", (".png",), rb"\x89PNG\r\n\x1a\n", always_allowed=True),
    ImageFormat("GIF", "image/gif", (".gif",), rb"GIF8[79]a"),
    ImageFormat("BMP", "image/bmp", (".bmp",), rb"BM"),
    ImageFormat("WEBP", "image/webp", (".webp",), rb"RIFF.{4}WEBP"),
    # Little-endian ("II") and big-endian ("MM") byte order, both with the number 42.
    ImageFormat("TIFF", "image/tiff", (".tif", ".tiff"), rb"II\*\x00|MM\x00\*"),
    ImageFormat("AVIF", "image/avif", (".avif",), brands=frozenset({b"avif", b"avis"})),
    ImageFormat(
        "HEIC",
        "image/heic",
        (".heic",),
        brands=frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}),
        decoder="HEIF",
    ),
    ImageFormat("HEIF", "image/heif", (".heif", ".hif"), brands=frozenset({b"mif1", b"msf1"})),
)
# The content types above, as a type for request parameters.
ContentType = Literal[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/bmp",
    "image/webp",
    "image/tiff",
    "image/avif",
    "image/heic",
    "image/heif",
]

BY_NAME: dict[str, ImageFormat] = {image_format.name: image_format for image_format in FORMATS}
BY_EXTENSION: dict[str, ImageFormat] = {
    extension: image_format for image_format in FORMATS for extension in image_format.extensions
}
ALWAYS_ALLOWED: frozenset[str] = frozenset(f.name for f in FORMATS if f.always_allowed)


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format `data` starts like (SNIFF_BYTES are enough), or None."""
    brands = _ftyp_brands(data)
    for image_format in FORMATS:
        if image_format.brands & brands:
            return image_format
        if image_format.magic and re.match(image_format.magic, data, re.DOTALL):
            return image_format
    return None


def _ftyp_brands(data: bytes) -> frozenset[bytes]:
    """The brands of the `ftyp` box a file starts with (major, then compatible ones)."""
    if data[4:8] != b"ftyp" or len(data) < 12:
        return frozenset()
    box_end = min(int.from_bytes(data[:4], "big"), len(data))
    compatible = (data[offset : offset + 4] for offset in range(16, box_end - 3, 4))
    return frozenset({data[8:12], *compatible})
