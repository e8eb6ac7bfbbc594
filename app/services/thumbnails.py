"""Thumbnails: made once per (image, size, format), cached on disk next to the images."""

import io
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from app.services.storage import ImageStore

ThumbnailFormat = Literal["jpeg", "webp"]
MEDIA_TYPES: dict[ThumbnailFormat, str] = {"jpeg": "image/jpeg", "webp": "image/webp"}


def make_thumbnail(data: bytes, size: int, image_format: ThumbnailFormat) -> bytes:
    """The picture as displayed (EXIF orientation applied, first frame), no larger than `size`
    on its longer side, on white where it was transparent. Pure: bytes in, bytes out."""
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


def cached_thumbnail(
    store: ImageStore, source: Path, content_hash: str, size: int, image_format: ThumbnailFormat
) -> Path:
    """The cached thumbnail's path, made first if needed. Synchronous: run it off the loop."""
    target = store.thumbnail_path(content_hash, size, image_format)
    if not target.is_file():
        store.write_file(target, make_thumbnail(source.read_bytes(), size, image_format))
    return target
