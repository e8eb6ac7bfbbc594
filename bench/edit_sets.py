"""The evaluation sets of bench/quality.py: real photos with mild and hard edits, and pictures
that are not photographs (documents, screenshots, logos, flat colours, bordered pictures), each
with edited copies, all made here with Pillow from fixed seeds.

Every sample names the originals it contains (`sources`): an edited copy contains its
original; a collage contains each photo pasted into it.
"""

import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

PHOTOS = {
    "skimage": (
        "data",
        [
            "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
            "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
            "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
            "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
        ],
    ),
    "sklearn": ("datasets/images", ["china.jpg", "flower.jpg"]),
    "matplotlib": ("mpl-data/sample_data", ["grace_hopper.jpg"]),
}  # fmt: skip
# The other half of a stereo pair: the same scene a moment apart, like a burst.
BURST = ("skimage", "data", "motorcycle_right.png", "motorcycle_left.png")


@dataclass(frozen=True)
class Sample:
    category: str  # "photo", "document", "screenshot", "logo", "flat", "bordered"
    sources: frozenset[str]  # the originals this picture contains
    edit: str  # "original" or the edit's name
    data: bytes
    source: str  # the original it was made from


def encode(image: Image.Image, image_format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image = image.convert("RGB") if image.mode not in {"L", "RGB"} else image
        options = {"quality": 92, **options}
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _package_file(package: str, folder: str, name: str) -> Path:
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        sys.exit(f"{package} is missing: make install-bench")
    return Path(spec.origin).parent / folder / name


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return opened.convert("RGB") if opened.mode not in {"L", "RGB"} else opened.copy()


def photos() -> list[Image.Image]:
    return [
        _open_rgb(_package_file(package, folder, name))
        for package, (folder, names) in PHOTOS.items()
        for name in names
    ]


# --- edits of photos --------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _watermark(image: Image.Image) -> Image.Image:
    marked = image.convert("RGBA")
    overlay = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = marked.size
    box = (int(width * 0.55), int(height * 0.8), int(width * 0.97), int(height * 0.95))
    draw.rectangle(box, fill=(255, 255, 255, 140))
    draw.text((box[0] + 6, box[1] + 4), "(c) SAMPLE PHOTO", fill=(0, 0, 0, 220))
    return Image.alpha_composite(marked, overlay).convert("RGB")


def _text_overlay(image: Image.Image) -> Image.Image:
    """Large semi-transparent words across the middle of the picture."""
    marked = image.convert("RGBA")
    overlay = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(12, marked.height // 6)
    for row, words in enumerate(["SAMPLE", "DO NOT COPY"]):
        draw.text(
            (marked.width // 12, marked.height // 4 + row * int(size * 1.3)),
            words,
            font=_font(size),
            fill=(255, 255, 255, 150),
            stroke_width=max(1, size // 20),
            stroke_fill=(0, 0, 0, 150),
        )
    return Image.alpha_composite(marked, overlay).convert("RGB")


def _crop(image: Image.Image, keep: float, anchor: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    width, height = image.size
    w, h = int(width * keep), int(height * keep)
    x, y = int((width - w) * anchor[0]), int((height - h) * anchor[1])
    return image.crop((x, y, x + w, y + h))


def _pad_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _screenshot(image: Image.Image, seed: int) -> Image.Image:
    """The photo at 60% of a 1280 x 800 window, inside a UI: title bar, sidebar, text."""
    rng = np.random.default_rng(seed)
    screen = Image.new("RGB", (1280, 800), (246, 246, 248))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1280, 44), fill=(52, 58, 70))
    draw.text((16, 12), f"Photos - album {seed}", font=_font(18), fill=(240, 240, 240))
    draw.rectangle((0, 44, 220, 800), fill=(230, 232, 236))
    for line in range(14):
        draw.text(
            (18, 70 + 48 * line),
            f"Folder {rng.integers(100, 999)}",
            font=_font(16),
            fill=(40, 40, 40),
        )
    target_width = int(1280 * 0.6)
    scale = min(target_width / image.width, 600 / image.height)
    shown = image.convert("RGB").resize(
        (int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS
    )
    screen.paste(shown, (250, 70))
    for line in range(4):
        draw.text(
            (250, 70 + shown.height + 16 + 26 * line),
            " ".join(f"word{rng.integers(10, 99)}" for _ in range(10)),
            font=_font(16),
            fill=(60, 60, 60),
        )
    return screen


def _collage(tiles: list[Image.Image]) -> Image.Image:
    """A 2 x 2 collage, 400 x 300 per tile, 8-pixel white gutters."""
    canvas = Image.new("RGB", (816, 616), (255, 255, 255))
    for index, tile in enumerate(tiles):
        fitted = ImageOps.fit(tile.convert("RGB"), (400, 300), Image.Resampling.LANCZOS)
        canvas.paste(
            fitted,
            (8 * (1 + index % 2) + 400 * (index % 2), 8 * (1 + index // 2) + 300 * (index // 2)),
        )
    return canvas


def _perspective(image: Image.Image) -> Image.Image:
    """As if photographed at an angle: the top edge 15% narrower than the bottom."""
    width, height = image.size
    inset = 0.15 * width / 2
    source = [(0, 0), (width, 0), (width, height), (0, height)]
    target = [(inset, 0), (width - inset, 0), (width, height), (0, height)]
    coefficients = _perspective_coefficients(target, source)
    return image.convert("RGB").transform(
        (width, height), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )


def _perspective_coefficients(
    target: Sequence[tuple[float, float]], source: Sequence[tuple[float, float]]
) -> tuple[float, ...]:
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows, dtype=float), np.array(source, dtype=float).ravel())
    return tuple(float(c) for c in solution)


def _noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


MILD_EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "jpeg_q25": lambda im: im,  # the edit is the encoding
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.35),
    "low_contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.6),
    "greyscale": lambda im: im.convert("L"),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "crop_80": lambda im: _crop(im, 0.8),
    "rotate_5": lambda im: im.rotate(5, resample=Image.Resampling.BICUBIC, expand=False),
    "mirror": ImageOps.mirror,
    "watermark": _watermark,
}
HARD_EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rotate_90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rotate_180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rotate_270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "crop_half_offcentre": lambda im: _crop(im, 0.707, anchor=(0.15, 0.8)),
    "pad_black": lambda im: _pad_square(im, (0, 0, 0)),
    "pad_white": lambda im: _pad_square(im, (255, 255, 255)),
    "text_overlay": _text_overlay,
    "perspective": _perspective,
    "mirror_crop_q50": lambda im: ImageOps.mirror(_crop(im, 0.8, anchor=(0.3, 0.6))),
    "hue_shift": lambda im: ImageEnhance.Color(im.convert("RGB")).enhance(2.0),
    "noise": lambda im: _noise(im, 12.0, seed=im.width),
    "downscale_25": lambda im: im.resize(
        (im.width // 4, im.height // 4), Image.Resampling.BILINEAR
    ),
}
# Edits whose encoding is the edit: JPEG quality per edit (default 92).
_QUALITY = {"jpeg_q25": 25, "mirror_crop_q50": 50}


def photo_samples() -> tuple[list[Sample], list[Sample]]:
    """The photo set (originals, mild and hard edits, screenshots, collage tiles) and the
    burst pair (two shots of one scene), kept apart: it is reported, not scored."""
    originals = photos()
    samples: list[Sample] = []
    for index, original in enumerate(originals):
        key = f"photo:{index}"
        only = frozenset({key})
        samples.append(Sample("photo", only, "original", encode(original), key))
        for edits in (MILD_EDITS, HARD_EDITS):
            for edit, apply in edits.items():
                data = encode(apply(original), quality=_QUALITY.get(edit, 92))
                samples.append(Sample("photo", only, edit, data, key))
        samples.append(
            Sample("photo", only, "screenshot", encode(_screenshot(original, index)), key)
        )
        # Its tile among three other photos of the set, in a different corner each time.
        others = [(index + step * 7) % len(originals) for step in (1, 2, 3)]
        tiles = [originals[i] for i in others]
        tiles.insert(index % 4, original)
        members = frozenset({key, *(f"photo:{i}" for i in others)})
        samples.append(Sample("photo", members, "collage_tile", encode(_collage(tiles)), key))
    burst_path = _package_file(BURST[0], BURST[1], BURST[2])
    burst = [
        Sample("burst", frozenset({"burst"}), "other_shot", encode(_open_rgb(burst_path)), "burst")
    ]
    return samples, burst


# --- pictures that are not photographs ------------------------------------------------------

_WORDS = [
    "account",
    "invoice",
    "total",
    "amount",
    "payment",
    "date",
    "customer",
    "order",
    "number",
    "service",
    "period",
    "balance",
    "dear",
    "madam",
    "sir",
    "regarding",
    "your",
    "letter",
    "of",
    "we",
    "confirm",
    "that",
    "the",
    "following",
    "items",
    "have",
    "been",
    "shipped",
    "please",
    "find",
    "attached",
    "report",
    "quarterly",
    "results",
    "revenue",
    "costs",
    "summary",
    "meeting",
    "agenda",
    "minutes",
    "project",
    "schedule",
    "delivery",
    "address",
    "reference",
    "terms",
    "conditions",
    "sincerely",
]


def _document(seed: int) -> Image.Image:
    """A page of black text on white: a letter, or a table of numbers."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (850, 1100), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font = _font(20)
    y = 80
    if seed % 2 == 0:
        draw.text(
            (80, y),
            f"Ref. {rng.integers(1000, 9999)}/{rng.integers(10, 99)}",
            font=font,
            fill=(0, 0, 0),
        )
        y += 60
        for _ in range(int(rng.integers(22, 32))):
            words = rng.choice(_WORDS, size=int(rng.integers(6, 11)))
            draw.text((80, y), " ".join(words), font=font, fill=(0, 0, 0))
            y += 30
    else:
        for row in range(int(rng.integers(18, 26))):
            cells = [f"{rng.integers(0, 99999):>6}" for _ in range(5)]
            draw.text((80, y), "  ".join(cells), font=font, fill=(0, 0, 0))
            draw.line((70, y + 26, 780, y + 26), fill=(120, 120, 120), width=1)
            y += 36 if row else 48
    return page


def _ui(seed: int) -> Image.Image:
    """A screenshot of an application: toolbar, sidebar, list rows, buttons."""
    rng = np.random.default_rng(seed)
    accent = tuple(int(c) for c in rng.integers(30, 200, size=3))
    screen = Image.new("RGB", (1024, 640), (250, 250, 250))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1024, 48), fill=accent)
    draw.text(
        (20, 14),
        f"App {seed}: {' '.join(rng.choice(_WORDS, 2))}",
        font=_font(18),
        fill=(255, 255, 255),
    )
    sidebar = int(rng.integers(160, 260))
    draw.rectangle((0, 48, sidebar, 640), fill=(236, 238, 242))
    for row in range(int(rng.integers(6, 12))):
        draw.text(
            (16, 70 + row * 40), str(rng.choice(_WORDS)).title(), font=_font(16), fill=(30, 30, 30)
        )
    for row in range(int(rng.integers(5, 10))):
        top = 70 + row * 56
        draw.rectangle(
            (sidebar + 20, top, 1000, top + 46), outline=(210, 210, 215), fill=(255, 255, 255)
        )
        draw.text(
            (sidebar + 34, top + 12),
            " ".join(rng.choice(_WORDS, 5)),
            font=_font(16),
            fill=(40, 40, 40),
        )
    draw.rounded_rectangle((860, 590, 1000, 626), radius=8, fill=accent)
    draw.text((880, 598), "Save", font=_font(16), fill=(255, 255, 255))
    return screen


def _logo(seed: int) -> Image.Image:
    """A logo on a transparent background (RGBA): a ring, a polygon or a rounded box of its
    own size and place, and two letters, in two colours."""
    rng = np.random.default_rng(seed)
    logo = Image.new("RGBA", (320, 320), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    colour = (*(int(c) for c in rng.integers(0, 200, size=3)), 255)
    second = (*(int(c) for c in rng.integers(0, 255, size=3)), 255)
    left, top = (int(v) for v in rng.integers(10, 90, size=2))
    right, bottom = (int(v) for v in rng.integers(230, 310, size=2))
    kind = seed % 3
    if kind == 0:
        draw.ellipse((left, top, right, bottom), outline=colour, width=int(rng.integers(8, 30)))
    elif kind == 1:
        corners = int(rng.integers(3, 8))
        angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) + rng.uniform(0, np.pi)
        cx, cy, radius = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
        draw.polygon(
            [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles], fill=colour
        )
    else:
        draw.rounded_rectangle(
            (left, top, right, bottom), radius=int(rng.integers(10, 60)), fill=colour
        )
    letters = "".join(chr(int(c)) for c in rng.integers(65, 91, size=2))
    centre = (int(rng.integers(120, 200)), int(rng.integers(120, 200)))
    draw.text(centre, letters, font=_font(int(rng.integers(60, 110))), fill=second, anchor="mm")
    return logo


def _flat(seed: int) -> Image.Image:
    """A flat colour (seeds 0-5: black, white, mid grey, red, navy, beige) or a smooth
    gradient between two colours (seeds 6-11)."""
    flats = [
        (0, 0, 0),
        (255, 255, 255),
        (128, 128, 128),
        (200, 30, 30),
        (20, 30, 90),
        (230, 220, 190),
    ]
    if seed < len(flats):
        return Image.new("RGB", (400, 300), flats[seed])
    rng = np.random.default_rng(seed)
    start, end = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, 400)[None, :, None]
    if seed % 2:
        ramp = np.linspace(0.0, 1.0, 300)[:, None, None]
    pixels = start * (1 - ramp) + end * ramp
    return Image.fromarray(np.broadcast_to(pixels, (300, 400, 3)).astype(np.uint8))


def shapes(seed: int) -> Image.Image:
    """A synthetic picture: a gradient sky and random shapes."""
    rng = np.random.default_rng(seed)
    width, height = 480, 360
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = Image.fromarray(
        (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    )
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        [draw.rectangle, draw.ellipse][int(rng.integers(0, 2))]((x0, y0, x1, y1), fill=colour)
    return image


def _letterbox(picture: Image.Image) -> Image.Image:
    """A 4:3 picture in a 16:9 black frame (pillarbox bars left and right)."""
    frame = Image.new("RGB", (640, 360), (0, 0, 0))
    frame.paste(picture.resize((480, 360)), (80, 0))
    return frame


def _on_background(logo: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    background = Image.new("RGBA", logo.size, (*colour, 255))
    return Image.alpha_composite(background, logo).convert("RGB")


def _scan(page: Image.Image, seed: int) -> Image.Image:
    """Printed and scanned: turned 1 degree, a little grey and noisy."""
    turned = page.convert("L").rotate(1.0, resample=Image.Resampling.BICUBIC, fillcolor=255)
    return _noise(ImageEnhance.Contrast(turned).enhance(0.85), 4.0, seed).convert("L")


_PNG = "png"  # edits saved as PNG; the rest as JPEG
NONPHOTO: dict[
    str, tuple[Callable[[int], Image.Image], dict[str, Callable[[Image.Image, int], Image.Image]]]
] = {
    "document": (
        _document,
        {
            "jpeg_q60": lambda im, s: im,
            "resize_60": lambda im, s: im.resize(
                (im.width * 3 // 5, im.height * 3 // 5), Image.Resampling.LANCZOS
            ),
            "scan": _scan,
            "crop_margins": lambda im, s: _crop(im, 0.9),
        },
    ),
    "screenshot": (
        _ui,
        {
            "jpeg_q70": lambda im, s: im,
            "resize_75": lambda im, s: im.resize(
                (im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.LANCZOS
            ),
            "crop_top": lambda im, s: im.crop((0, 48, im.width, im.height)),
            "png_resave": lambda im, s: im,
        },
    ),
    "logo": (
        _logo,
        {
            "on_white": lambda im, s: _on_background(im, (255, 255, 255)),
            "on_colour": lambda im, s: _on_background(im, (40, 90, 160)),
            "resize_50": lambda im, s: im.resize((160, 160), Image.Resampling.LANCZOS),
            "png_resave": lambda im, s: im,
        },
    ),
    "flat": (
        _flat,
        {
            "resize_50": lambda im, s: im.resize(
                (im.width // 2, im.height // 2), Image.Resampling.BILINEAR
            ),
            "jpeg_q70": lambda im, s: im,
            "noise": lambda im, s: _noise(im, 2.0, s),
            "palette": lambda im, s: im.convert(
                "P", palette=Image.Palette.ADAPTIVE, colors=64
            ).convert("RGB"),
        },
    ),
    "bordered": (
        lambda seed: _letterbox(shapes(seed)),
        {
            "resize_50": lambda im, s: im.resize(
                (im.width // 2, im.height // 2), Image.Resampling.LANCZOS
            ),
            "jpeg_q50": lambda im, s: im,
            "bars_removed": lambda im, s: im.crop((80, 0, 560, 360)),
            "white_bars": lambda im, s: _pad_square(
                im.crop((80, 0, 560, 360)), (255, 255, 255)
            ).resize((360, 360)),
        },
    ),
}
_NONPHOTO_ENCODING = {
    "jpeg_q60": ("JPEG", 60),
    "jpeg_q70": ("JPEG", 70),
    "jpeg_q50": ("JPEG", 50),
    "png_resave": ("PNG", 0),
}
ORIGINALS_PER_CATEGORY = 12


def nonphoto_samples() -> list[Sample]:
    samples = []
    for category, (make, edits) in NONPHOTO.items():
        for seed in range(ORIGINALS_PER_CATEGORY):
            key = f"{category}:{seed}"
            only = frozenset({key})
            original = make(seed)
            original_format = "PNG"
            samples.append(
                Sample(category, only, "original", encode(original, original_format), key)
            )
            for edit, apply in edits.items():
                image_format, quality = _NONPHOTO_ENCODING.get(edit, ("PNG", 0))
                options = {"quality": quality} if image_format == "JPEG" else {}
                samples.append(
                    Sample(
                        category,
                        only,
                        edit,
                        encode(apply(original, seed), image_format, **options),
                        key,
                    )
                )
    return samples
