"""Near-duplicate verification: local features (ORB keypoints) computed once per picture, and a
geometric check (RANSAC) that decides whether one picture is the other, edited.

A global embedding says that two pictures look alike; it cannot say that one is a copy of the
other, and no threshold on its score separates edited copies (a crop, a screenshot, a picture
turned on its side score 0.4 to 0.7) from look-alikes. Here a copy is a picture whose keypoints
match the other's under one plausible similarity transform (rotation, scale, shift: what
crops, rotations, pads, screenshots and collage tiles do), the query also tried mirrored.
Matches that cannot be a copy are rejected: too few inliers, inliers that are a small share of
the matches (repeated text), or of the keypoints in the region both pictures show (two screens
of one application share their frame, not their content), inliers bunched in one spot, and
implausible scales. Pictures with too little texture for keypoints (flat colours, smooth
gradients) are compared by a tiny colour thumbnail instead, and never with textured ones.
Every threshold below was calibrated on bench/quality.py (see the README's quality table).

Features are serialised with `LocalFeatures.to_bytes` and stored with each image: 36 bytes per
keypoint (coordinates, 32-byte ORB descriptor), at most 512 for the picture and 256 for its
mirror image, plus the 768-byte thumbnail and a 15-byte header: at most 28,431 bytes. Pure
computation (OpenCV, numpy), no I/O.
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from app.imaging.picture import as_displayed

# Keypoints are found on the picture scaled to this longer side (smaller ones are enlarged to
# MIN_SIDE only: enlarging further invents corners), so copies at any size compare alike.
FEATURE_SIDE = 512
MIN_SIDE = 320
MAX_KEYPOINTS = 512
MAX_MIRRORED_KEYPOINTS = 256  # the mirror image only ever serves as a query
FAST_THRESHOLD = 12
# Keypoints are spread over a GRID x GRID grid: the strongest corners of a picture crowd in
# its busiest part (the text of a screenshot), and a copy showing another part would match none.
GRID = 4
# A picture whose brightness varies less than this (standard deviation, 0..255) has no
# keypoints worth finding: noise on a flat colour would give random ones.
MIN_CONTRAST = 6.0
# ORB finds no keypoint within its edgeThreshold (31 pixels, OpenCV's default) of the border:
# a picture no wider or higher than twice that has none (and OpenCV's pyramid fails on a strip
# a pixel or two high).
ORB_BORDER = 31
# Fewer keypoints than this: the picture is "low texture" and compared by its thumbnail.
MIN_KEYPOINTS = 24
TINY_SIDE = 16
MAX_TINY_DIFFERENCE = 8.0  # mean absolute difference of the thumbnails, 0..255
MAX_DESCRIPTOR_DISTANCE = 64  # bits of 256: mutual best matches further apart are noise
MIN_INLIERS = 15
RANSAC_THRESHOLD = 8.0  # pixels, on the FEATURE_SIDE scale
MIN_INLIER_RATIO = 0.1  # inliers / matches
MIN_REGION_SHARE = 0.06  # inliers / keypoints of the sparser picture in the common region
# inlier bounding box / bounding box of the keypoints in the region both pictures show, in one
# of the pictures
MIN_COVERAGE = 0.3
MAX_SCALE = 8.0

_MAGIC = b"LF1"
# magic, width, height, the stored picture's longer side, keypoints, mirrored keypoints
_HEADER = struct.Struct("<3sHHIHH")
_POINT_SCALE = 8.0  # coordinates stored as uint16 in 1/8 pixels

Transform = Literal["similarity", "appearance"]


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
    original_side: int  # the longer side of the picture as stored, in pixels
    keypoints: Keypoints
    mirrored: Keypoints  # of the picture mirrored left to right
    tiny: NDArray[np.uint8]  # TINY_SIDE x TINY_SIDE x 3, RGB

    @property
    def pixel_scale(self) -> float:
        """Pixels of the stored picture per pixel of the FEATURE_SIDE scale."""
        return self.original_side / max(self.width, self.height)

    @property
    def low_texture(self) -> bool:
        return len(self.keypoints) < MIN_KEYPOINTS

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(
                _MAGIC,
                self.width,
                self.height,
                self.original_side,
                len(self.keypoints),
                len(self.mirrored),
            )
        ]
        for keypoints in (self.keypoints, self.mirrored):
            parts.append(np.round(keypoints.points * _POINT_SCALE).astype("<u2").tobytes())
            parts.append(keypoints.descriptors.tobytes())
        parts.append(self.tiny.tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        """Raises ValueError for bytes `to_bytes` did not write."""
        if len(data) < _HEADER.size:
            raise ValueError("not serialised local features")
        magic, width, height, side, count, mirrored_count = _HEADER.unpack_from(data)
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
        return cls(width, height, side, sets[0], sets[1], tiny.reshape(TINY_SIDE, TINY_SIDE, 3))


@dataclass(frozen=True)
class Evidence:
    """Why a candidate is taken for the query picture, edited. `transform`: "similarity" (the
    keypoints agree under a rotation, scale and shift, given in `rotation` degrees
    counter-clockwise and `scale` from query to candidate) or "appearance" (two pictures without
    texture whose thumbnails agree; no keypoints, so `matches` and `inliers` are 0)."""

    transform: Transform
    mirrored: bool  # the candidate is the query's mirror image, edited
    matches: int  # mutual best descriptor matches
    inliers: int  # matches the transform carries onto each other
    rotation: float = 0.0
    scale: float = 1.0


def extract(image: Image.Image, *, original_side: int | None = None) -> LocalFeatures:
    """The local features of the picture as displayed (`picture.as_displayed`: upright 8-bit
    RGB, transparent parts on white); an image in another mode is shown that way first.
    `original_side`: the longer side of the picture as stored, when it was decoded smaller (JPEG
    draft mode); it only serves to report the scale of a match in the pictures' own pixels."""
    rgb = image if image.mode == "RGB" else as_displayed(image)
    longer = max(rgb.size)
    scale = FEATURE_SIDE / longer if longer > FEATURE_SIDE else max(1.0, MIN_SIDE / longer)
    width = max(1, round(rgb.width * scale))
    height = max(1, round(rgb.height * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    grey = np.asarray(rgb.convert("L").resize((width, height), resample))
    tiny = np.asarray(rgb.resize((TINY_SIDE, TINY_SIDE), Image.Resampling.BOX), dtype=np.uint8)
    keypoints, mirrored = _orb(grey)
    return LocalFeatures(
        width=width,
        height=height,
        original_side=original_side or longer,
        keypoints=keypoints,
        mirrored=mirrored,
        tiny=tiny,
    )


def _orb(grey: NDArray[np.uint8]) -> tuple[Keypoints, Keypoints]:
    """Up to MAX_KEYPOINTS ORB keypoints spread over the picture, and the descriptors of the
    strongest MAX_MIRRORED_KEYPOINTS of them in the mirror image. Corners are where they are
    whichever way the picture faces, so the mirror image's keypoints are the picture's, moved
    across (and their orientation turned over): one detection, not two."""
    if min(grey.shape) <= 2 * ORB_BORDER or float(grey.std()) < MIN_CONTRAST:
        return _NO_KEYPOINTS, _NO_KEYPOINTS
    orb = cv2.ORB.create(
        nfeatures=4 * MAX_KEYPOINTS, fastThreshold=FAST_THRESHOLD, edgeThreshold=ORB_BORDER
    )
    chosen = _spread(orb.detect(grey, None), MAX_KEYPOINTS, grey.shape[1], grey.shape[0])
    found, descriptors = orb.compute(grey, chosen)
    if descriptors is None or not found:
        return _NO_KEYPOINTS, _NO_KEYPOINTS
    strongest = sorted(found, key=lambda k: -k.response)[:MAX_MIRRORED_KEYPOINTS]
    width = grey.shape[1]
    mirrored_found, mirrored_descriptors = orb.compute(
        np.ascontiguousarray(grey[:, ::-1]),
        [
            cv2.KeyPoint(
                width - 1 - k.pt[0],
                k.pt[1],
                k.size,
                (180.0 - k.angle) % 360.0,
                k.response,
                k.octave,
            )
            for k in strongest
        ],
    )
    return _keypoints(found, descriptors), _keypoints(mirrored_found, mirrored_descriptors)


_NO_KEYPOINTS = Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))


def _keypoints(found: Sequence[cv2.KeyPoint], descriptors: NDArray[Any] | None) -> Keypoints:
    if descriptors is None or not found:
        return _NO_KEYPOINTS
    points = np.array([k.pt for k in found], dtype=np.float32)
    return Keypoints(points, np.ascontiguousarray(descriptors, dtype=np.uint8))


def _spread(
    found: Sequence[cv2.KeyPoint], count: int, width: int, height: int
) -> list[cv2.KeyPoint]:
    """The `count` strongest keypoints, at most count / GRID**2 from each cell first."""
    ranked = sorted(found, key=lambda k: -k.response)
    per_cell = max(1, count // (GRID * GRID))
    taken: dict[tuple[int, int], int] = {}
    chosen, rest = [], []
    for keypoint in ranked:
        cell = (int(keypoint.pt[0] * GRID / width), int(keypoint.pt[1] * GRID / height))
        if taken.get(cell, 0) < per_cell:
            taken[cell] = taken.get(cell, 0) + 1
            chosen.append(keypoint)
        else:
            rest.append(keypoint)
    return (chosen + rest)[:count]


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
    if len(keypoints) < MIN_INLIERS or len(candidate.keypoints) < MIN_INLIERS:
        return None
    # Mutual best matches rather than Lowe's ratio test: text and interfaces repeat their
    # letters, and a ratio test throws away every repeated corner of a true copy.
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    good = [
        m
        for m in matcher.match(keypoints.descriptors, candidate.keypoints.descriptors)
        if m.distance <= MAX_DESCRIPTOR_DISTANCE
    ]
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
    count = int(inliers.sum())
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if count < MIN_INLIERS or count < MIN_INLIER_RATIO * len(good):
        return None
    if not 1.0 / MAX_SCALE <= scale <= MAX_SCALE:
        return None
    shown_query, shown_candidate = _in_overlap(matrix, keypoints, query, candidate)
    if (
        count < MIN_REGION_SHARE * min(len(shown_query), len(shown_candidate))
        or max(_share(source[inliers], shown_query), _share(target[inliers], shown_candidate))
        < MIN_COVERAGE
    ):
        return None
    # The y axis points down: a counter-clockwise turn as seen has a negative angle in pixels.
    rotation = -float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    scale *= candidate.pixel_scale / query.pixel_scale  # in the pictures' own pixels
    return Evidence("similarity", mirrored, len(good), count, round(rotation, 1), round(scale, 3))


def _in_overlap(
    matrix: NDArray[Any],
    keypoints: Keypoints,
    query: LocalFeatures,
    candidate: LocalFeatures,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The keypoints of each picture inside the region both show: the query's (`keypoints`,
    as tried) that the transform carries into the candidate's frame, and the candidate's that
    its inverse carries into the query's."""
    inverse = cv2.invertAffineTransform(matrix)
    to_candidate = keypoints.points @ matrix[:, :2].T + matrix[:, 2]
    to_query = candidate.keypoints.points @ inverse[:, :2].T + inverse[:, 2]

    def inside(points: NDArray[np.floating[Any]], features: LocalFeatures) -> NDArray[np.bool_]:
        x, y = points[:, 0], points[:, 1]
        inside: NDArray[np.bool_] = (
            (x >= 0) & (y >= 0) & (x < features.width) & (y < features.height)
        )
        return inside

    return (
        keypoints.points[inside(to_candidate, candidate)],
        candidate.keypoints.points[inside(to_query, query)],
    )


def _share(inliers: NDArray[np.float32], shown: NDArray[np.float32]) -> float:
    """How much of the region both pictures show the inliers span, in one picture: their
    bounding box over that of its keypoints in the region (inliers bunched in one spot span
    little). Measured within the region, not the whole picture: a collage tile or a
    screenshot's picture is a part of its frame, and its inliers can span no more. A region
    with fewer than MIN_INLIERS keypoints counts as spanned by nothing."""
    if len(shown) < MIN_INLIERS:
        return 0.0
    extent = inliers.max(axis=0) - inliers.min(axis=0)
    whole = np.maximum(shown.max(axis=0) - shown.min(axis=0), 1.0)
    return float(extent[0] * extent[1]) / float(whole[0] * whole[1])
