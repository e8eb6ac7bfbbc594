"""Test images, made in memory with Pillow."""

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (different seeds give different pictures)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def scene(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A synthetic picture with structure: a gradient sky and random shapes. Different seeds
    give unrelated pictures; the same seed gives the same picture."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 9)))
    return image


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **options: Any) -> bytes:
    return encode(photo(width, height, seed), "JPEG", **options)


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "PNG")
