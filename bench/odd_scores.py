"""Scores of file pairs that look the same to a person but are written differently (issue 13,
items 1 to 3), with the default embedder:

1. a 320 x 240 JPEG turned by EXIF orientation 6 whose XResolution is a signed rational (-1/1),
   against the upright picture;
2. a 16-bit greyscale PNG (the 8-bit picture x 257) against the 8-bit PNG;
3. an RGBA badge saved with black under its transparent pixels against the same badge with
   white there.

    .venv/bin/python -m bench.odd_scores [--baseline PATH]

A person sees each pair as the same picture: the score should be about 1. `--baseline` runs the
same pairs against another checkout of the project (with its own .venv) in the same run.
"""

import argparse
import io
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, TiffImagePlugin, TiffTags

ROOT = Path(__file__).resolve().parents[1]


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def scene() -> Image.Image:
    rng = np.random.default_rng(7)
    picture = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((240, 320))
    draw = ImageDraw.Draw(picture)
    for _ in range(10):
        x0, x1 = sorted(rng.integers(0, 240, 2).tolist())
        y0, y1 = sorted(rng.integers(0, 320, 2).tolist())
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return picture


def sideways_pair() -> tuple[bytes, bytes]:
    upright = scene()  # portrait, as displayed
    directory = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    directory[0x0112] = 6
    directory[0x011A] = TiffImagePlugin.IFDRational(-1, 1)
    directory.tagtype[0x011A] = TiffTags.SIGNED_RATIONAL
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + directory.tobytes(8)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 320 x 240
    return encode(stored, "JPEG", quality=95, exif=exif), encode(upright, "JPEG", quality=95)


def sixteen_bit_pair() -> tuple[bytes, bytes]:
    grey = scene().convert("L")
    sixteen = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    return encode(sixteen, "PNG"), encode(grey, "PNG")


def badge_pair() -> tuple[bytes, bytes]:
    files = []
    for under in ((0, 0, 0), (255, 255, 255)):
        badge = Image.new("RGBA", (128, 128), (*under, 0))
        draw = ImageDraw.Draw(badge)
        draw.ellipse((12, 12, 116, 116), fill=(200, 30, 30, 255))
        draw.rectangle((44, 54, 84, 74), fill=(255, 255, 255, 255))
        files.append(encode(badge, "PNG"))
    return files[0], files[1]


def scores() -> list[float]:
    from app.imaging.analysis import analyse_image
    from app.imaging.embeddings import PerceptualEmbedder

    embedder = PerceptualEmbedder(512)

    def vector(data: bytes) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
        formats = frozenset({"JPEG", "PNG"})
        return analyse_image(
            data, allowed_formats=formats, max_pixels=10**8, embedder=embedder
        ).embedding

    return [
        float(vector(first) @ vector(second))
        for first, second in (sideways_pair(), sixteen_bit_pair(), badge_pair())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to score alike")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.bare:
        print(" ".join(f"{score:.4f}" for score in scores()))
        return
    rows = {"this checkout": scores()}
    if arguments.baseline is not None:
        answer = subprocess.run(  # noqa: S603 - our own script, in the other checkout
            [str(arguments.baseline / ".venv" / "bin" / "python"), __file__, "--bare"],
            cwd=arguments.baseline,
            env={**os.environ, "PYTHONPATH": str(arguments.baseline)},
            capture_output=True,
            text=True,
            check=True,
        )
        rows["baseline"] = [float(score) for score in answer.stdout.split()]
    print("checkout         1 sideways JPEG  2 16-bit PNG  3 RGBA badges")
    for name, row in rows.items():
        print(f"{name:15}  {row[0]:15.4f}  {row[1]:12.4f}  {row[2]:13.4f}")


if __name__ == "__main__":
    main()
