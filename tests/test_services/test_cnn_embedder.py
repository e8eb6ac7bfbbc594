"""The optional cnn embedder. Its behaviour tests need `make install-cnn` and are skipped without
it; refusing to start without it is tested everywhere."""

import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import ImageOps

from app.core.config import Settings
from app.core.resources import open_resources
from app.imaging.analysis import analyse_image
from app.imaging.cnn import REQUIRED_MODULES, CnnUnavailable
from app.imaging.embeddings import create_embedder
from tests.support.app import make_settings
from tests.support.images import encode, scene

DEFAULT_THRESHOLD = Settings.model_fields["SIMILARITY_THRESHOLD"].default
Embed = Callable[[bytes], NDArray[np.float32]]

needs_cnn = pytest.mark.skipif(
    any(find_spec(name) is None for name in REQUIRED_MODULES),
    reason="the optional cnn extra is not installed (make install-cnn)",
)


async def test_selecting_cnn_without_the_extra_refuses_to_start_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(CnnUnavailable, match="make install-cnn"):
        async with open_resources(make_settings(tmp_path, EMBEDDING_MODEL="cnn")):
            pass


@pytest.fixture(scope="module")
def embed() -> Embed:
    embedder = create_embedder("cnn", 512)

    def run(data: bytes) -> NDArray[np.float32]:
        return analyse_image(
            data, allowed_formats=frozenset({"JPEG", "PNG"}), max_pixels=10**8, embedder=embedder
        ).embedding

    return run


@needs_cnn
def test_cnn_embedding_is_deterministic_unit_float32(embed: Embed) -> None:
    data = encode(scene(seed=1), "JPEG")
    first, second = embed(data), embed(data)

    assert first.shape == (512,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first, second)


@needs_cnn
def test_cnn_finds_edited_copies_and_ignores_mirroring(embed: Embed) -> None:
    original = scene(640, 480, seed=1)
    query = embed(encode(original, "JPEG"))
    resized = embed(encode(original.resize((200, 150)), "JPEG", quality=40))
    mirrored = embed(encode(ImageOps.mirror(original), "JPEG"))
    unrelated = embed(encode(scene(640, 480, seed=2), "JPEG"))

    assert float(query @ resized) > DEFAULT_THRESHOLD
    assert float(query @ mirrored) > 0.99
    assert float(query @ unrelated) < float(query @ resized)
