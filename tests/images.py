"""Test images, made in memory with Pillow."""

import io
from typing import Any

import numpy as np
from PIL import Image


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (different seeds give different pictures)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **options: Any) -> bytes:
    return encode(photo(width, height, seed), "JPEG", **options)


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "PNG")
