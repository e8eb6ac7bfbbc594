"""Near-duplicate verification: local features (ORB keypoints) computed once per picture, and a
geometric check (RANSAC) that decides whether two pictures show the same picture, edited.

A global embedding says two pictures look alike; it cannot say one is a copy of the other.
Here, a copy is a picture whose keypoints match the other's under one plausible geometric
transform: a similarity (rotation, scale, shift: crops, rotations, pads, screenshots, collage
tiles) or a perspective. The query is also tried mirrored. Pictures with too little texture
for keypoints (flat colours, smooth gradients) are compared by their tiny colour layout
instead. Pure computation (OpenCV, numpy), no I/O.

Features are serialised (`LocalFeatures.to_bytes`) and stored with each image; their size is
about 36 bytes per keypoint (coordinates and a 32-byte ORB descriptor) for the picture and its
mirror image, plus a 16 x 16 colour thumbnail: at most 19.2 KB.
"""

import struct
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

# Keypoints are found on the picture scaled to this longer side (up or down), so that copies
# at any resolution are compared at the same scale.
FEATURE_SIDE = 512
MAX_KEYPOINTS = 256
TINY_SIDE = 16
# Fewer keypoints than this: the picture is "low texture" and compared by appearance.
MIN_KEYPOINTS = 24
# Lowe's ratio test: a match must be clearly better than the second best.
RATIO = 0.8
# A verified match needs this many RANSAC inliers (calibrated on bench/quality.py: unrelated
# photos, documents and screenshots rarely reach 10).
MIN_INLIERS = 15
RANSAC_THRESHOLD = 8.0  # pixels, on the FEATURE_SIDE scale
# The inliers must span this share of one of the two pictures (bounding box), so that a shared
# logo or a line of the same text is not taken for the whole picture.
MIN_COVERAGE = 0.3
MAX_SCALE = 8.0
# Low texture: the mean absolute difference of the tiny thumbnails (0..255) below which two
# pictures look the same.
MAX_TINY_DIFFERENCE = 8.0

_MAGIC = b"LF1"
_HEADER = struct.Struct("<3sHHHH")  # magic, width, height, keypoints, mirrored keypoints
_POINT_SCALE = 8.0  # coordinates stored as uint16 in 1/8 pixels

Transform = Literal["similarity", "perspective", "appearance"]


@dataclass(frozen=True)
class Keypoints:
    points: NDArray[np.float32]  # n x 2, pixels on the FEATURE_SIDE scale
    descriptors: NDArray[np.uint8]  # n x 32

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class LocalFeatures:
    width: int  # the picture's size on the FEATURE_SIDE scale
    height: int
    keypoints: Keypoints
    mirrored: Keypoints  # of the picture mirrored left to right
    tiny: NDArray[np.uint8]  # TINY_SIDE x TINY_SIDE x 3, RGB

    @property
    def low_texture(self) -> bool:
        return len(self.keypoints) < MIN_KEYPOINTS

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(_MAGIC, self.width, self.height, len(self.keypoints), len(self.mirrored))
        ]
        for keypoints in (self.keypoints, self.mirrored):
            parts.append(np.round(keypoints.points * _POINT_SCALE).astype("<u2").tobytes())
            parts.append(keypoints.descriptors.tobytes())
        parts.append(self.tiny.tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        """Raises ValueError for bytes `to_bytes` did not write."""
        magic, width, height, count, mirrored_count = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not serialised local features")
        offset = _HEADER.size
        sets = []
        for n in (count, mirrored_count):
            points = np.frombuffer(data, "<u2", n * 2, offset).reshape(n, 2)
            offset += n * 4
            descriptors = np.frombuffer(data, np.uint8, n * 32, offset).reshape(n, 32)
            offset += n * 32
            sets.append(Keypoints((points / _POINT_SCALE).astype(np.float32), descriptors))
        tiny = np.frombuffer(data, np.uint8, TINY_SIDE * TINY_SIDE * 3, offset)
        if offset + tiny.size != len(data):
            raise ValueError("serialised local features have the wrong length")
        return cls(width, height, sets[0], sets[1], tiny.reshape(TINY_SIDE, TINY_SIDE, 3))


@dataclass(frozen=True)
class Evidence:
    """Why two pictures are taken for the same picture."""

    transform: Transform
    mirrored: bool
    matches: int  # descriptor matches that passed the ratio test (0 for "appearance")
    inliers: int  # matches consistent with the transform (0 for "appearance")


def extract(image: Image.Image) -> LocalFeatures:
    """The local features of a decoded, upright picture."""
    rgb = image.convert("RGB")
    scale = FEATURE_SIDE / max(rgb.size)
    width = max(1, round(rgb.width * scale))
    height = max(1, round(rgb.height * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    grey = np.asarray(rgb.convert("L").resize((width, height), resample))
    tiny = np.asarray(rgb.resize((TINY_SIDE, TINY_SIDE), Image.Resampling.BOX), dtype=np.uint8)
    return LocalFeatures(
        width=width,
        height=height,
        keypoints=_orb(grey),
        mirrored=_orb(np.ascontiguousarray(grey[:, ::-1])),
        tiny=tiny,
    )


def _orb(grey: NDArray[np.uint8]) -> Keypoints:
    # Stretching the contrast first lets faded and dark copies give the same keypoints.
    stretched = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)
    orb = cv2.ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=10)
    found, descriptors = orb.detectAndCompute(stretched, None)
    if descriptors is None or not found:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    points = np.array([k.pt for k in found], dtype=np.float32)
    return Keypoints(points, np.ascontiguousarray(descriptors, dtype=np.uint8))


def verify(query: LocalFeatures, candidate: LocalFeatures) -> Evidence | None:
    """Evidence that `candidate` is `query` edited (or mirrored and edited), or None."""
    if query.low_texture or candidate.low_texture:
        return _same_appearance(query, candidate)
    for mirrored, keypoints in ((False, query.keypoints), (True, query.mirrored)):
        evidence = _geometric(keypoints, query, candidate, mirrored=mirrored)
        if evidence is not None:
            return evidence
    return None


def _same_appearance(query: LocalFeatures, candidate: LocalFeatures) -> Evidence | None:
    """Both pictures nearly featureless: the same if their tiny thumbnails agree (as they are,
    or mirrored). A textured picture is never the copy of a featureless one."""
    if not (query.low_texture and candidate.low_texture):
        return None
    other = candidate.tiny.astype(np.float32)
    for mirrored, tiny in ((False, query.tiny), (True, query.tiny[:, ::-1])):
        if float(np.mean(np.abs(tiny.astype(np.float32) - other))) <= MAX_TINY_DIFFERENCE:
            return Evidence("appearance", mirrored, 0, 0)
    return None


def _geometric(
    keypoints: Keypoints, query: LocalFeatures, candidate: LocalFeatures, *, mirrored: bool
) -> Evidence | None:
    if len(keypoints) < 2 or len(candidate.keypoints) < 2:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(keypoints.descriptors, candidate.keypoints.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    source = keypoints.points[[m.queryIdx for m in good]]
    target = candidate.keypoints.points[[m.trainIdx for m in good]]
    matrix, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD
    )
    if matrix is None or mask is None:
        return None
    inliers = mask.ravel().astype(bool)
    if int(inliers.sum()) < MIN_INLIERS or not _plausible_similarity(matrix):
        return None
    if not _covers(source[inliers], query, target[inliers], candidate):
        return None
    return Evidence("similarity", mirrored, len(good), int(inliers.sum()))


def _plausible_similarity(matrix: NDArray[np.float64]) -> bool:
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return 1.0 / MAX_SCALE <= scale <= MAX_SCALE


def _covers(
    source: NDArray[np.float32],
    query: LocalFeatures,
    target: NDArray[np.float32],
    candidate: LocalFeatures,
) -> bool:
    """Whether the inliers span enough of one picture (and are not a cluster in one corner)."""

    def share(points: NDArray[np.float32], features: LocalFeatures) -> float:
        extent = points.max(axis=0) - points.min(axis=0)
        return float(extent[0] * extent[1]) / float(features.width * features.height)

    return max(share(source, query), share(target, candidate)) >= MIN_COVERAGE
