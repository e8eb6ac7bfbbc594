"""Validation, metadata extraction, embedding and local features of uploaded bytes. The
embedder and the local features see the picture as displayed (app/imaging/picture.py), as
thumbnails do.

Pure and synchronous (Pillow and numpy, no I/O): callers run it off the event loop.
"""

import contextlib
import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image

from app.errors import ImageTooLarge, UnsupportedImageFormat
from app.imaging import verification
from app.imaging.embeddings import Embedder
from app.imaging.formats import sniff_format
from app.imaging.picture import as_displayed, decoding, displayed_size, open_image, orientation

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
# PostgreSQL stores neither NUL nor unpaired surrogates in text and JSONB, and no control
# character is meaningful in metadata.
UNSTORABLE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_MAX_METADATA_TEXT = 128
# Resolutions outside this range are not real (a zero or negative rational, a unit mix-up).
_DPI_RANGE = (1.0, 100_000.0)


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
    seconds: float  # time spent validating, decoding, embedding (and finding local features)
    # verification.LocalFeatures.to_bytes(), when asked for
    local_features: bytes | None = None
    # The region vectors (regions x dimension, `Embedder.embed_regions`), when asked for
    regions: NDArray[np.float32] | None = None


def analyse_image(
    data: bytes,
    *,
    allowed_formats: frozenset[str],
    max_pixels: int,
    embedder: Embedder,
    max_frames: int = 1000,
    local_features: bool = False,
    regions: bool = False,
) -> AnalysedImage:
    """Validate `data` as an accepted image and derive its metadata and embedding (and, with
    `local_features`, the keypoints near-duplicate verification compares; with `regions`, the
    region vectors).

    Raises UnsupportedImageFormat (not an accepted format), ImageTooLarge (too many pixels) or
    InvalidImage (corrupt or truncated).
    """
    started = time.perf_counter()
    sniffed = sniff_format(data)
    if sniffed is None or sniffed.name not in allowed_formats:
        accepted = ", ".join(sorted(allowed_formats))
        raise UnsupportedImageFormat(f"Unsupported image format; accepted formats: {accepted}")

    digest = hashlib.sha256(data).digest()
    with decoding(sniffed, max_pixels):
        image = open_image(data, sniffed)
    with image:  # the picture may be the opened image itself: embedded before it is closed
        with decoding(sniffed, max_pixels):
            stored_size = image.size
            if stored_size[0] * stored_size[1] > max_pixels:
                pixels = stored_size[0] * stored_size[1]
                raise ImageTooLarge(f"Image has {pixels} pixels; the limit is {max_pixels}")
            frames = int(getattr(image, "n_frames", 1))
            if frames > max_frames:
                raise ImageTooLarge(f"Image has {frames} frames; the limit is {max_frames}")
            mode, transparent = image.mode, image.has_transparency_data
            # The file's own EXIF, read before Pillow's TIFF decoder drops the orientation tag
            # as it turns the pixels.
            exif = _safe_exif(image)
            # Decoding validates the whole stream (a truncated file fails here). JPEG can be
            # decoded at a reduced scale, which is much faster and still reads every byte;
            # other decoders' reduced decodes (HEIF's embedded thumbnails) would skip the
            # picture itself.
            if sniffed.name == "JPEG":
                image.draft("RGB", _decode_size(stored_size, embedder, local_features))
            image.load()
            picture = as_displayed(image)
            width, height = displayed_size(stored_size, orientation(image))
            metadata = _describe(image, mode=mode, transparent=transparent, frames=frames)
            if exif:
                metadata["exif"] = exif
        if regions:
            embedding, region_vectors = embedder.embed_regions(picture, content_sha256=digest)
        else:
            embedding, region_vectors = embedder.embed(picture, content_sha256=digest), None
        features = (
            verification.extract(picture, original_side=max(stored_size)).to_bytes()
            if local_features
            else None
        )
    metadata["embedding"] = {"model": embedder.name, "dimension": embedder.dimension}
    return AnalysedImage(
        content_hash=digest.hex(),
        format=sniffed.name,
        content_type=sniffed.content_type,
        extension=sniffed.extensions[0],
        width=width,
        height=height,
        metadata=metadata,
        embedding=embedding,
        seconds=time.perf_counter() - started,
        local_features=features,
        regions=region_vectors,
    )


def _decode_size(
    stored_size: tuple[int, int], embedder: Embedder, local_features: bool
) -> tuple[int, int]:
    """The smallest size JPEG may be decoded at: both sides at least the embedder's, and the
    longer side at least the local features' (they work at FEATURE_SIDE)."""
    side = embedder.decode_side
    if not local_features:
        return side, side
    width, height = stored_size
    scale = verification.FEATURE_SIDE / max(width, height, 1)
    return max(side, math.ceil(width * scale)), max(side, math.ceil(height * scale))


def _describe(image: Image.Image, *, mode: str, transparent: bool, frames: int) -> dict[str, Any]:
    """The stored metadata: JSON values PostgreSQL can hold, odd ones left out."""
    metadata: dict[str, Any] = {
        "mode": mode,
        "has_transparency": transparent,
        "frames": frames,
        "has_icc_profile": bool(image.info.get("icc_profile")),
    }
    if (dpi := _dpi(image.info.get("dpi"))) is not None:
        metadata["dpi"] = dpi
    return metadata


def _safe_exif(image: Image.Image) -> dict[str, Any]:
    """A small, privacy-conscious EXIF subset (no GPS). A broken EXIF block yields nothing."""
    try:
        exif = image.getexif()
        result: dict[str, Any] = {}
        for tag, key in _EXIF_TEXT_TAGS.items():
            if (text := _exif_text(exif.get(tag))) is not None:
                result[key] = text
        sub_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        for tag, key in _EXIF_IFD_TEXT_TAGS.items():
            if (text := _exif_text(sub_ifd.get(tag))) is not None:
                result[key] = text
        orientation = exif.get(ExifTags.Base.Orientation)
        if isinstance(orientation, int) and 1 <= orientation <= 8:
            result["orientation"] = orientation
        return result
    except Exception:  # noqa: BLE001 - malformed EXIF must never cost the upload
        return {}


def _exif_text(value: object) -> str | None:
    """EXIF text is ASCII by the standard and UTF-8 from most current software; Pillow reads it
    as Latin-1, so UTF-8 is tried first."""
    if isinstance(value, str):
        with contextlib.suppress(UnicodeError):
            value = value.encode("latin-1").decode("utf-8")
    return clean_text(value)


def _dpi(value: object) -> list[float] | None:
    """Horizontal and vertical resolution, when both are finite and plausible."""
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    try:
        resolution = [float(value[0]), float(value[1])]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    low, high = _DPI_RANGE
    if not all(math.isfinite(r) and low <= r <= high for r in resolution):
        return None
    return [round(r, 2) for r in resolution]


def clean_text(value: object, max_length: int = _MAX_METADATA_TEXT) -> str | None:
    """`value` as text PostgreSQL can store, without control characters, at most
    `max_length` characters; None when nothing is left or it is not text."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = UNSTORABLE_CHARACTERS.sub("", value).strip()
    return text[:max_length] or None
