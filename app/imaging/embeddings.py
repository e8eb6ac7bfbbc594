"""Embedders: turn a decoded image into an L2-normalised float32 vector.

Pure computation (numpy, Pillow), no I/O. Every embedder has a `name`, recorded with each stored
vector, and a fixed `dimension`.
"""

from functools import cache
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image


class Embedder(Protocol):
    name: str
    dimension: int
    # Smallest side the embedder wants to see; JPEGs are decoded at a reduced scale down to it.
    decode_side: int

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]: ...

    def embed_regions(
        self, image: Image.Image, *, content_sha256: bytes
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The picture's vector (as `embed`) and its region vectors: one L2-normalised row per
        part of the picture (`REGION_BOXES`), or none (0 rows) for an embedder without them."""
        ...


# The parts of a picture that region vectors embed, as fractions of its width and height (left,
# top, right, bottom): its four quadrants, and its centre (three quarters of each side). A
# collage tile fills about a quadrant; a screenshot shows its picture about the centre.
REGION_BOXES = (
    (0.0, 0.0, 0.5, 0.5),
    (0.5, 0.0, 1.0, 0.5),
    (0.0, 0.5, 0.5, 1.0),
    (0.5, 0.5, 1.0, 1.0),
    (0.125, 0.125, 0.875, 0.875),
)


def region_crops(image: Image.Image) -> list[Image.Image]:
    """The picture's parts, `REGION_BOXES`, in that order."""
    width, height = image.size
    return [
        image.crop(
            (round(left * width), round(top * height), round(right * width), round(bottom * height))
        )
        for left, top, right, bottom in REGION_BOXES
    ]


class HashEmbedder:
    """The original description's mock embedding: a Gaussian vector seeded by the SHA-256 of the
    file's bytes.

    The same bytes always give the same vector; any other bytes give an unrelated one (cosine
    near 0), so only exact copies are "similar".
    """

    name = "hash"
    decode_side = 64  # no pixel work: decoding only validates the file

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]:
        rng = np.random.default_rng(int.from_bytes(content_sha256, "big"))
        vector = rng.standard_normal(self.dimension)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def embed_regions(
        self, image: Image.Image, *, content_sha256: bytes
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """No region vectors: the hash of the file's bytes says nothing about its parts."""
        vector = self.embed(image, content_sha256=content_sha256)
        return vector, np.zeros((0, self.dimension), np.float32)


# --- perceptual -------------------------------------------------------------------------------

_SIDE = 64  # working resolution: every image is reduced to 64 x 64 before any feature
_DCT_SIDE = 32
_DCT_KEEP = 15  # low-frequency block of the luma DCT (minus the DC term)
_ORIENTATION_BINS = 8
_CHROMA_BINS = 6


def _dct_matrix(size: int) -> NDArray[np.float64]:
    """Orthonormal DCT-II matrix: `M @ x` transforms a column vector."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix: NDArray[np.float64] = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_DCT_SIDE)
# A horizontal mirror flips the sign of coefficients with an odd horizontal frequency; keeping
# those as magnitudes makes the block mirror-invariant.
_ODD_COLUMNS = (np.arange(_DCT_KEEP) % 2 == 1)[None, :].repeat(_DCT_KEEP, axis=0)
_DCT_MASK = np.ones((_DCT_KEEP, _DCT_KEEP), dtype=bool)
_DCT_MASK[0, 0] = False


def _pool(values: NDArray[np.float64], cells: int) -> NDArray[np.float64]:
    """Mean over a `cells x cells` grid (the side must be divisible)."""
    side = values.shape[0] // cells
    pooled: NDArray[np.float64] = values.reshape(cells, side, cells, side, *values.shape[2:]).mean(
        axis=(1, 3)
    )
    return pooled


def _unit(block: NDArray[np.float64]) -> NDArray[np.float64]:
    norm = float(np.linalg.norm(block))
    return block / norm if norm > 1e-12 else np.zeros_like(block)


def _centred_unit(block: NDArray[np.float64]) -> NDArray[np.float64]:
    return _unit(block - block.mean())


class PerceptualEmbedder:
    """A content-aware embedding from the pixels, with numpy alone.

    Four blocks, each normalised, weighted and concatenated:
    - luma structure: the low-frequency DCT of the brightness (as in pHash, but kept as real
      values), odd horizontal frequencies as magnitudes so a mirror image gives the same block;
    - gradient orientation histograms over a 1 + 2x2 + 4x4 grid, summed with their mirror image;
    - colour layout: the chroma (Cb, Cr) on a 4x4 grid, summed with its mirror image;
    - colour distribution: a 2-D chroma histogram.
    The brightness is standardised (zero mean, unit variance) first, so brightness and contrast
    changes cancel; everything is computed at 64 x 64, so resizing and re-compression hardly
    matter. The concatenation is mapped to `dimension` by a fixed orthonormal projection, which
    keeps cosine similarities exactly (seeded, so the same on every machine).
    """

    name = "perceptual"
    decode_side = 2 * _SIDE
    # Relative weights of the blocks, tuned on bench/quality.py.
    weights: ClassVar[dict[str, float]] = {
        "dct": 1.0,
        "gradients": 1.0,
        "chroma_layout": 0.5,
        "chroma_histogram": 0.5,
    }

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._projection = _projection(dimension)

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]:
        rgb = np.asarray(
            image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.BOX), dtype=np.float64
        )
        red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        # ITU-R 601 luma, the same weights Pillow uses for "L": a greyscale copy has equal luma.
        luma = 0.299 * red + 0.587 * green + 0.114 * blue
        luma = (luma - luma.mean()) / max(float(luma.std()), 1.0)
        chroma = np.stack(
            [
                -0.168736 * red - 0.331264 * green + 0.5 * blue,
                0.5 * red - 0.418688 * green - 0.081312 * blue,
            ],
            axis=-1,
        )
        features = np.concatenate(
            [
                self.weights["dct"] * _dct_block(luma),
                self.weights["gradients"] * _gradient_block(luma),
                self.weights["chroma_layout"] * _chroma_layout_block(chroma),
                self.weights["chroma_histogram"] * _chroma_histogram_block(chroma),
            ]
        )
        vector: NDArray[np.float64] = self._projection @ features
        norm = float(np.linalg.norm(vector))
        if norm < 1e-12:  # a perfectly flat image: no structure, no colour
            vector = np.zeros(self.dimension)
            vector[0], norm = 1.0, 1.0
        return (vector / norm).astype(np.float32)

    def embed_regions(
        self, image: Image.Image, *, content_sha256: bytes
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Each part of the picture embedded as a picture of its own."""
        vector = self.embed(image, content_sha256=content_sha256)
        parts = [self.embed(crop, content_sha256=b"") for crop in region_crops(image)]
        return vector, np.stack(parts)


_FEATURE_SIZE = (_DCT_KEEP * _DCT_KEEP - 1) + 21 * _ORIENTATION_BINS + 32 + _CHROMA_BINS**2
_PROJECTION_SEED = 20261125


@cache
def _projection(dimension: int) -> NDArray[np.float64]:
    """The fixed `dimension x features` projection: a pure function of the dimension and the
    seed, built once per process (the QR of a 512-row matrix costs tens of milliseconds)."""
    rng = np.random.default_rng(_PROJECTION_SEED)
    gaussian = rng.standard_normal((max(dimension, _FEATURE_SIZE), _FEATURE_SIZE))
    if dimension >= _FEATURE_SIZE:
        orthonormal, _ = np.linalg.qr(gaussian)
        projection: NDArray[np.float64] = orthonormal[:dimension]
    else:
        projection = gaussian[:dimension] / np.sqrt(dimension)
    projection.setflags(write=False)
    return projection


def _dct_block(luma: NDArray[np.float64]) -> NDArray[np.float64]:
    small = _pool(luma, _DCT_SIDE)
    coefficients = (_DCT @ small @ _DCT.T)[:_DCT_KEEP, :_DCT_KEEP]
    coefficients = np.where(_ODD_COLUMNS, np.abs(coefficients), coefficients)
    return _unit(coefficients[_DCT_MASK])


def _gradient_block(luma: NDArray[np.float64]) -> NDArray[np.float64]:
    gy, gx = np.gradient(luma)
    magnitude = np.hypot(gx, gy)
    # Unsigned orientation in [0, pi), split into bins centred on multiples of pi/8.
    orientation = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.rint(orientation / (np.pi / _ORIENTATION_BINS)).astype(int) % _ORIENTATION_BINS
    histogram = np.zeros((_SIDE, _SIDE, _ORIENTATION_BINS))
    np.put_along_axis(histogram, bins[..., None], magnitude[..., None], axis=2)
    # A mirror maps column j to -j and orientation bin b to -b (mod 8).
    mirrored_bins = (-np.arange(_ORIENTATION_BINS)) % _ORIENTATION_BINS
    histogram = histogram + histogram[:, ::-1, :][:, :, mirrored_bins]
    cells = [_pool(histogram, grid).reshape(-1, _ORIENTATION_BINS) for grid in (1, 2, 4)]
    pooled = np.sqrt(np.concatenate(cells))  # Hellinger: tempers dominant edges
    return _centred_unit(pooled.ravel())


def _chroma_layout_block(chroma: NDArray[np.float64]) -> NDArray[np.float64]:
    grid = _pool(chroma, 4)
    return _unit((grid + grid[:, ::-1]).ravel() / 255.0)


def _chroma_histogram_block(chroma: NDArray[np.float64]) -> NDArray[np.float64]:
    edges = np.linspace(-128.0, 128.0, _CHROMA_BINS + 1)
    histogram, _, _ = np.histogram2d(
        chroma[..., 0].ravel(), chroma[..., 1].ravel(), bins=(edges, edges)
    )
    return _centred_unit(np.sqrt(histogram.ravel()))


EMBEDDING_MODELS = ("cnn", "perceptual", "hash")


def create_embedder(name: str, dimension: int) -> Embedder:
    """The embedder called `name`, for the two that need no model file (`cnn` needs its graph:
    `app.core.resources.create_named_embedder`)."""
    if name == PerceptualEmbedder.name:
        return PerceptualEmbedder(dimension)
    if name == HashEmbedder.name:
        return HashEmbedder(dimension)
    raise ValueError(f"unknown embedding model {name!r}")
