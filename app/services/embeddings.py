"""Embedders: turn a decoded image into an L2-normalised float32 vector.

Pure computation (numpy, Pillow), no I/O. Every embedder has a `name`, recorded with each stored
vector, and a fixed `dimension`.
"""

from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]: ...


class HashEmbedder:
    """The seed's mock embedding: a Gaussian vector seeded by the SHA-256 of the file's bytes.

    The same bytes always give the same vector; any other bytes give an unrelated one (cosine
    near 0), so only exact copies are "similar".
    """

    name = "hash"

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]:
        rng = np.random.default_rng(int.from_bytes(content_sha256, "big"))
        vector = rng.standard_normal(self.dimension)
        return (vector / np.linalg.norm(vector)).astype(np.float32)


def create_embedder(name: str, dimension: int) -> Embedder:
    if name == HashEmbedder.name:
        return HashEmbedder(dimension)
    raise ValueError(f"unknown embedding model {name!r}")
