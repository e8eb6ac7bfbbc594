"""Test images, made in memory with Pillow."""

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def text_page(seed: int, width: int = 600, height: int = 800) -> Image.Image:
    """Black text on white: lines of random words (different seeds give different pages)."""
    rng = np.random.default_rng(seed)
    words = [
        "invoice",
        "total",
        "amount",
        "payment",
        "date",
        "order",
        "number",
        "service",
        "balance",
        "report",
    ]
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=18)
    for line in range(24):
        text = " ".join(str(w) for w in rng.choice(words, size=int(rng.integers(4, 9))))
        draw.text((50, 50 + 28 * line), text, font=font, fill=(0, 0, 0))
    return page


def screenshot_of(picture: Image.Image, seed: int = 0) -> Image.Image:
    """`picture` at 60% of a 1280 x 800 window with a title bar, a sidebar and text."""
    rng = np.random.default_rng(seed)
    screen = Image.new("RGB", (1280, 800), (246, 246, 248))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1280, 44), fill=(52, 58, 70))
    draw.rectangle((0, 44, 220, 800), fill=(230, 232, 236))
    font = ImageFont.load_default(size=16)
    for line in range(14):
        draw.text(
            (18, 70 + 48 * line), f"Folder {rng.integers(100, 999)}", font=font, fill=(0, 0, 0)
        )
    scale = 768 / picture.width
    shown = picture.resize((768, int(picture.height * scale)), Image.Resampling.LANCZOS)
    screen.paste(shown, (250, 70))
    return screen


def collage_of(pictures: list[Image.Image]) -> Image.Image:
    """A 2 x 2 collage of four pictures, 480 x 360 each, in reading order, on white with
    8-pixel gutters."""
    canvas = Image.new("RGB", (976, 736), (255, 255, 255))
    for index, picture in enumerate(pictures):
        tile = picture.convert("RGB").resize((480, 360), Image.Resampling.LANCZOS)
        canvas.paste(tile, (8 + 488 * (index % 2), 8 + 368 * (index // 2)))
    return canvas
