"""The inputs of the recorded EfficientNet-Lite0 reference (tests/fixtures/)."""

import numpy as np
from numpy.typing import NDArray
from PIL import Image

INPUTS_SEED = 20261129
SIDE = 224


def reference_inputs(pictures: list[Image.Image]) -> NDArray[np.float32]:
    """A batch (N x 3 x 224 x 224): uniform noise in the model's input range, then each picture
    scaled as the cnn embedder scales it (squashed to 224 x 224, (pixel - 127) / 128)."""
    noise = np.random.default_rng(INPUTS_SEED).uniform(-1.0, 1.0, (1, 3, SIDE, SIDE))
    scaled = [
        (
            np.asarray(p.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float32)
            - 127.0
        )
        / 128.0
        for p in pictures
    ]
    batch = np.concatenate([noise, np.stack(scaled).transpose(0, 3, 1, 2)])
    return np.ascontiguousarray(batch, dtype=np.float32)
