"""Validation, metadata extraction and embedding of uploaded bytes.

Pure and synchronous (Pillow and numpy, no I/O): callers run it off the event loop.
"""

import hashlib
import io
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from app.imaging import verification
from app.imaging.embeddings import Embedder
from app.imaging.formats import sniff_format

# EXIF orientations 5..8 rotate by 90 degrees: the displayed width and height are swapped.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_TEXT_TAGS = {
    ExifTags.Base.Make: "camera_make",
    ExifTags.Base.Model: "camera_model",
    ExifTags.Base.Software: "software",
    ExifTags.Base.DateTime: "modified_at",
}
_EXIF_IFD_TEXT_TAGS = {
    ExifTags.Base.DateTimeOriginal: "taken_at",
    ExifTags.Base.LensModel: "lens_model",
}
# PostgreSQL rejects NUL in text and JSONB; no control character is meaningful in metadata.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_METADATA_TEXT = 128


@dataclass(frozen=True)
class AnalysedImage:
    content_hash: str
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    metadata: dict[str, Any]
    embedding: NDArray[np.float32]
    seconds: float  # time spent validating, decoding and embedding
    # verification.LocalFeatures.to_bytes(), when asked for
    local_features: bytes | None = None


def analyse_image(
    data: bytes,
    *,
    allowed_formats: frozenset[str],
    max_pixels: int,
    embedder: Embedder,
    max_frames: int = 1000,
    local_features: bool = False,
) -> AnalysedImage:
    """Validate `data` as an accepted image and derive its metadata and embedding (and, with
    `local_features`, the keypoints near-duplicate verification compares).

    Raises UnsupportedImageFormat (not an accepted format), ImageTooLarge (too many pixels) or
    InvalidImage (corrupt or truncated).
    """
    started = time.perf_counter()
    sniffed = sniff_format(data)
    if sniffed is None or sniffed.name not in allowed_formats:
        accepted = ", ".join(sorted(allowed_formats))
        raise UnsupportedImageFormat(f"Unsupported image format; accepted formats: {accepted}")

    image_format = sniffed.name
    digest = hashlib.sha256(data).digest()
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"Image has {width * height} pixels; the limit is {max_pixels}")
            metadata = _describe(image)
            if metadata["frames"] > max_frames:
                raise ImageTooLarge(
                    f"Image has {metadata['frames']} frames; the limit is {max_frames}"
                )
            # Decoding validates the whole stream (a truncated file fails here). JPEG can be
            # decoded at a reduced scale, which is much faster and still reads every byte.
            image.draft("RGB", _decode_size(width, height, embedder, local_features))
            image.load()
            upright = _upright(image)
            embedding = embedder.embed(upright, content_sha256=digest)
            features = (
                verification.extract(upright, original_side=max(width, height)).to_bytes()
                if local_features
                else None
            )
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"Image exceeds the pixel limit of {max_pixels}") from exc
    # Pillow's plugins also fail on truncated or malformed streams with IndexError (a GIF cut
    # inside a frame header) or struct.error (short reads of fixed-size fields).
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        struct.error,
    ) as exc:
        raise InvalidImage(
            f"The file is not a valid {image_format} image (corrupt or truncated)"
        ) from exc

    orientation = metadata.get("exif", {}).get("orientation")
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    metadata["embedding"] = {"model": embedder.name, "dimension": embedder.dimension}
    return AnalysedImage(
        content_hash=digest.hex(),
        format=image_format,
        content_type=sniffed.content_type,
        extension=sniffed.extensions[0],
        width=width,
        height=height,
        metadata=metadata,
        embedding=embedding,
        seconds=time.perf_counter() - started,
        local_features=features,
    )


def _decode_size(
    width: int, height: int, embedder: Embedder, local_features: bool
) -> tuple[int, int]:
    """The smallest size JPEG may be decoded at: both sides at least the embedder's, and the
    longer side at least the local features' (they work at FEATURE_SIDE)."""
    side = embedder.decode_side
    if not local_features:
        return side, side
    scale = verification.FEATURE_SIDE / max(width, height, 1)
    return max(side, math.ceil(width * scale)), max(side, math.ceil(height * scale))


def _upright(image: Image.Image) -> Image.Image:
    """The image as displayed: EXIF orientation applied (a broken EXIF block is ignored)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF must never cost the upload
        return image


def _describe(image: Image.Image) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "mode": image.mode,
        "has_transparency": image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}
        or "transparency" in image.info,
        "frames": int(getattr(image, "n_frames", 1)),
        "has_icc_profile": bool(image.info.get("icc_profile")),
    }
    dpi = image.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2:
        metadata["dpi"] = [round(float(dpi[0]), 2), round(float(dpi[1]), 2)]
    exif = _safe_exif(image)
    if exif:
        metadata["exif"] = exif
    return metadata


def _safe_exif(image: Image.Image) -> dict[str, Any]:
    """A small, privacy-conscious EXIF subset (no GPS). A broken EXIF block yields nothing."""
    try:
        exif = image.getexif()
        result: dict[str, Any] = {}
        for tag, key in _EXIF_TEXT_TAGS.items():
            if (text := _clean_text(exif.get(tag))) is not None:
                result[key] = text
        sub_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        for tag, key in _EXIF_IFD_TEXT_TAGS.items():
            if (text := _clean_text(sub_ifd.get(tag))) is not None:
                result[key] = text
        orientation = exif.get(ExifTags.Base.Orientation)
        if isinstance(orientation, int) and 1 <= orientation <= 8:
            result["orientation"] = orientation
        return result
    except Exception:  # noqa: BLE001 - malformed EXIF must never cost the upload
        return {}


def _clean_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = CONTROL_CHARACTERS.sub("", value).strip()
    return text[:_MAX_METADATA_TEXT] or None
