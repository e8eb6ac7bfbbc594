"""Thumbnail rendering. Pure: bytes in, bytes out; callers run it off the event loop."""

import io
from typing import Literal

from PIL import Image

from app.errors import InvalidImage
from app.imaging.formats import sniff_format
from app.imaging.picture import as_displayed, decoding, open_image

ThumbnailFormat = Literal["jpeg", "webp"]
MEDIA_TYPES: dict[ThumbnailFormat, str] = {"jpeg": "image/jpeg", "webp": "image/webp"}


def render_thumbnail(data: bytes, size: int, image_format: ThumbnailFormat) -> bytes:
    """The picture as displayed (see app/imaging/picture.py), no larger than `size` on its
    longer side. Raises InvalidImage when the stored bytes no longer decode."""
    stored_format = sniff_format(data)
    if stored_format is None:
        raise InvalidImage("The stored file is not an image the service can read")
    with decoding(stored_format):
        image = open_image(data, stored_format)
    with image:  # the picture may be the opened image itself
        with decoding(stored_format):
            # JPEG decodes at a reduced scale, HEIF from an embedded thumbnail when one is as
            # large as asked; other decoders ignore this.
            image.draft("RGB", (size, size))
            image.load()
            picture = as_displayed(image)
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        picture.save(buffer, format=image_format.upper(), quality=85)
    return buffer.getvalue()
