"""The `cnn` embedder (the default): ImageNet-trained EfficientNet-Lite0 features, run with
onnxruntime from the graph `onnx_model.build_feature_extractor` makes of the published weights.
No torch, at install or at run time."""

import threading
from functools import cache
from typing import Any

import numpy as np
import onnxruntime
from numpy.typing import NDArray
from PIL import Image

from app.imaging.embeddings import region_crops
from app.imaging.onnx_model import FEATURES, INPUT_NAME, INPUT_SIDE, OUTPUT_NAME

# EfficientNet-Lite's own input scaling: (pixel - 127) / 128.
_PIXEL_CENTRE, _PIXEL_SCALE = 127.0, 128.0

# The self-check every built or cached graph must pass before it serves: its features for
# uniform noise in [-1, 1] (numpy's default_rng(20261129), shape 1 x 3 x 224 x 224) at eight
# positions, as torch computed them (tests/fixtures/efficientnet_lite0_reference.json has all
# 1280, and for two pictures too).
REFERENCE_SEED = 20261129
REFERENCE_FEATURES = {
    113: 4.54637,
    413: 3.84577,
    434: 3.8795,
    455: 5.38812,
    808: 3.22516,
    824: 2.91411,
    1127: 3.14266,
    1244: 3.49586,
}
_REFERENCE_TOLERANCE = 1e-3


class ModelMismatch(RuntimeError):
    """The graph does not compute what the reference says EfficientNet-Lite0 computes."""


def open_session(model: bytes) -> Any:
    """An onnxruntime session of the serialised model, checked against REFERENCE_FEATURES.
    Raises ModelMismatch (a corrupt cache file, a changed runtime) or onnxruntime's own errors
    for bytes that are no model at all."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    session = onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )
    noise = np.random.default_rng(REFERENCE_SEED).uniform(-1.0, 1.0, (1, 3, INPUT_SIDE, INPUT_SIDE))
    features = session.run([OUTPUT_NAME], {INPUT_NAME: noise.astype(np.float32)})[0][0]
    for position, expected in REFERENCE_FEATURES.items():
        if abs(float(features[position]) - expected) > _REFERENCE_TOLERANCE * max(1.0, expected):
            raise ModelMismatch(
                f"EfficientNet-Lite0 feature {position} is {features[position]:.5f}, "
                f"the reference says {expected}"
            )
    return session


class CnnEmbedder:
    """Global-average-pooled EfficientNet-Lite0 features of the picture and of its mirror image
    (averaged, so a mirrored copy embeds identically), mapped from 1280 to `dimension` numbers
    by a fixed seeded projection with orthonormal rows, then L2-normalised.

    `session` comes from `open_session`. One inference runs at a time: onnxruntime already
    spreads one over the cores."""

    name = "cnn"
    decode_side = INPUT_SIDE

    def __init__(self, dimension: int, session: Any) -> None:
        self.dimension = dimension
        self._session = session
        self._lock = threading.Lock()
        self._projection = _projection(dimension)

    def features(self, pictures: list[Image.Image]) -> NDArray[np.float32]:
        """The 1280 pooled features of each picture (squashed to 224 x 224): N x 1280."""
        return self._run(np.stack([_scaled(p) for p in pictures]))

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]:
        pixels = _scaled(image)
        return self._vectors(self._run(np.stack([pixels, pixels[:, ::-1]])).mean(axis=0))

    def embed_regions(
        self, image: Image.Image, *, content_sha256: bytes
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The picture's vector and one per part (`REGION_BOXES`), each part embedded as a
        picture of its own, not mirrored: one onnxruntime run of a batch of 2 + 5. (Measured
        against pooling the parts out of the picture's own feature map, which costs nothing
        more but finds collage tiles and screenshots less often: README, "Region vectors".)"""
        pixels = _scaled(image)
        parts = [_scaled(crop) for crop in region_crops(image)]
        features = self._run(np.stack([pixels, pixels[:, ::-1], *parts]))
        return self._vectors(features[:2].mean(axis=0)), self._vectors(features[2:])

    def _vectors(self, pooled: NDArray[np.float32]) -> NDArray[np.float32]:
        """Pooled features (1280, or N x 1280) projected to `dimension` and L2-normalised."""
        projected = pooled.astype(np.float64) @ self._projection[:, : pooled.shape[-1]].T
        norms = np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-12)
        vectors: NDArray[np.float32] = (projected / norms).astype(np.float32)
        return vectors

    def _run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        pixels = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        with self._lock:
            features: NDArray[np.float32] = self._session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[
                0
            ]
        return features


@cache
def _projection(dimension: int) -> NDArray[np.float64]:
    """The first `dimension` rows of a seeded random orthonormal 1280 x 1280 matrix (its QR
    takes a while: built once per process)."""
    gaussian = np.random.default_rng(20261125).standard_normal((FEATURES, FEATURES))
    orthonormal, _ = np.linalg.qr(gaussian)
    projection: NDArray[np.float64] = orthonormal[:dimension]
    projection.setflags(write=False)
    return projection


def _scaled(picture: Image.Image) -> NDArray[np.float32]:
    """224 x 224 x 3, scaled as the model was trained: (pixel - 127) / 128."""
    square = picture.convert("RGB").resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR)
    scaled: NDArray[np.float32] = (
        np.asarray(square, dtype=np.float32) - _PIXEL_CENTRE
    ) / _PIXEL_SCALE
    return scaled
