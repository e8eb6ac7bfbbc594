"""Thumbnail rendering. Pure: bytes in, bytes out; callers run it off the event loop."""

import io
from typing import Literal

from PIL import Image, ImageOps

ThumbnailFormat = Literal["jpeg", "webp"]
MEDIA_TYPES: dict[ThumbnailFormat, str] = {"jpeg": "image/jpeg", "webp": "image/webp"}


def render_thumbnail(data: bytes, size: int, image_format: ThumbnailFormat) -> bytes:
    """The picture as displayed (EXIF orientation applied, first frame), no larger than `size`
    on its longer side, on white where it was transparent."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        upright = ImageOps.exif_transpose(image)
        upright.thumbnail((size, size), Image.Resampling.LANCZOS)
        if upright.mode in {"RGBA", "LA", "PA", "P"}:
            rgba = upright.convert("RGBA")
            flattened = Image.new("RGB", rgba.size, (255, 255, 255))
            flattened.paste(rgba, mask=rgba.getchannel("A"))
            upright = flattened
        buffer = io.BytesIO()
        upright.convert("RGB").save(buffer, format=image_format.upper(), quality=85)
        return buffer.getvalue()
