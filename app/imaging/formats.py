"""The one table of image formats the service knows: magic numbers, content type, extensions.

Light on purpose (no Pillow): the command line's client reads it to tell images from other
files. A format is always decided from the bytes; filenames and declared content types are not
trusted. Adding a format is one row here (plus its `ContentType` literal, checked by a test).
"""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ImageFormat:
    name: str  # Pillow's format name
    content_type: str
    extensions: tuple[str, ...]  # the first is used for stored files
    signatures: tuple[bytes, ...]  # magic numbers at offset 0
    always_allowed: bool = False  # accepted whatever ALLOWED_EXTENSIONS says


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "image/jpeg", (".jpg", ".jpeg"), (b"\xff\xd8\xff",), always_allowed=True),
    ImageFormat("PNG", "image/png", (".png",), (b"\x89PNG\r\n\x1a\n",), always_allowed=True),
    ImageFormat("GIF", "image/gif", (".gif",), (b"GIF87a", b"GIF89a")),
    ImageFormat("BMP", "image/bmp", (".bmp",), (b"BM",)),
)
# The content types above, as a type for request parameters.
ContentType = Literal["image/jpeg", "image/png", "image/gif", "image/bmp"]

BY_NAME: dict[str, ImageFormat] = {image_format.name: image_format for image_format in FORMATS}
BY_EXTENSION: dict[str, ImageFormat] = {
    extension: image_format for image_format in FORMATS for extension in image_format.extensions
}
ALWAYS_ALLOWED: frozenset[str] = frozenset(f.name for f in FORMATS if f.always_allowed)


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format whose magic number `data` starts with (16 bytes are enough), or None."""
    for image_format in FORMATS:
        if data.startswith(image_format.signatures):
            return image_format
    return None
