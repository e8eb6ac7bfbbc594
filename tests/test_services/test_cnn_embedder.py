"""The default cnn embedder: EfficientNet-Lite0 read from its published weights without torch,
checked against outputs torch recorded (tests/fixtures/efficientnet_lite0_reference.json)."""

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import ImageOps

from app.core import model_cache
from app.core.config import Settings
from app.core.resources import create_named_embedder
from app.imaging.analysis import analyse_image
from app.imaging.cnn import CnnEmbedder, ModelMismatch, open_session
from app.imaging.formats import BY_NAME
from app.imaging.onnx_model import build_feature_extractor
from app.imaging.torch_weights import WeightsFormatError, read_legacy_state_dict
from app.imaging.verification import LocalFeatures, verify
from tests.support.app import SHARED_MODEL_DIR
from tests.support.images import encode, scene
from tests.support.odd_files import ACCEPTED, OddFile
from tests.support.reference import reference_inputs

DEFAULT_THRESHOLD = Settings.model_fields["SIMILARITY_THRESHOLD"].default
REFERENCE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "efficientnet_lite0_reference.json").read_text()
)
Embed = Callable[[bytes], NDArray[np.float32]]


@pytest.fixture(scope="module")
def embedder() -> CnnEmbedder:
    embedder = create_named_embedder("cnn", 512, model_dir=SHARED_MODEL_DIR)
    assert isinstance(embedder, CnnEmbedder)
    return embedder


@pytest.fixture(scope="module")
def embed(embedder: CnnEmbedder) -> Embed:
    def run(data: bytes) -> NDArray[np.float32]:
        return analyse_image(
            data, allowed_formats=frozenset({"JPEG", "PNG"}), max_pixels=10**8, embedder=embedder
        ).embedding

    return run


def test_the_graph_computes_what_torch_computed(embedder: CnnEmbedder) -> None:
    pixels = reference_inputs([scene(640, 480, seed=1), scene(320, 240, seed=2)])
    expected = np.array(REFERENCE["features"], dtype=np.float32)

    features = embedder._run(pixels.transpose(0, 2, 3, 1))

    assert features.shape == (3, 1280)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)


def test_the_default_install_runs_the_model_without_torch(embedder: CnnEmbedder) -> None:
    assert embedder.name == Settings.model_fields["EMBEDDING_MODEL"].default == "cnn"
    assert "torch" not in sys.modules


def test_the_graph_is_built_once_and_read_from_the_cache(tmp_path: Path) -> None:
    first = model_cache.efficientnet_lite0_session(tmp_path)
    cached = list(tmp_path.glob("efficientnet-lite0-*.onnx"))
    model_cache._sessions.clear()  # as a new process would
    second = model_cache.efficientnet_lite0_session(tmp_path)

    assert len(cached) == 1
    assert cached[0].stat().st_size > 10_000_000  # the 4.6 M parameters, as float32
    assert second is not first
    assert list(tmp_path.glob("efficientnet-lite0-*.onnx")) == cached


def test_a_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    model_cache.efficientnet_lite0_session(tmp_path)
    (cached,) = tmp_path.glob("efficientnet-lite0-*.onnx")
    cached.write_bytes(b"not a model")
    model_cache._sessions.clear()

    model_cache.efficientnet_lite0_session(tmp_path)

    assert cached.stat().st_size > 10_000_000


def test_a_graph_with_other_weights_fails_the_reference_check() -> None:
    weights = read_legacy_state_dict(model_cache.weights_path().read_bytes())
    weights["_conv_head.weight"] = weights["_conv_head.weight"] * 1.01

    with pytest.raises(ModelMismatch, match="the reference says"):
        open_session(build_feature_extractor(weights))


def test_the_weights_reader_refuses_pickles_that_name_anything_else() -> None:
    import pickle

    hostile = (
        pickle.dumps(0x1950A86A20F9469CFC6C)
        + pickle.dumps(1001)
        + pickle.dumps({"little_endian": True})
        + pickle.dumps(print)
    )  # a global the restricted unpickler must not resolve

    with pytest.raises(WeightsFormatError, match=r"builtins\.print"):
        read_legacy_state_dict(hostile)


def test_cnn_embedding_is_deterministic_unit_float32(embed: Embed) -> None:
    data = encode(scene(seed=1), "JPEG")
    first, second = embed(data), embed(data)

    assert first.shape == (512,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first, second)


def test_cnn_finds_edited_copies_and_ignores_mirroring(embed: Embed) -> None:
    original = scene(640, 480, seed=1)
    query = embed(encode(original, "JPEG"))
    resized = embed(encode(original.resize((200, 150)), "JPEG", quality=40))
    mirrored = embed(encode(ImageOps.mirror(original), "JPEG"))
    unrelated = embed(encode(scene(640, 480, seed=2), "JPEG"))

    assert float(query @ resized) > DEFAULT_THRESHOLD
    assert float(query @ mirrored) > 0.99
    assert float(query @ unrelated) < float(query @ resized)


def test_a_truncated_weights_file_is_refused() -> None:
    weights = model_cache.weights_path().read_bytes()

    with pytest.raises(WeightsFormatError, match="truncated"):
        read_legacy_state_dict(weights[: len(weights) // 2])


@pytest.mark.parametrize("odd", ACCEPTED, ids=lambda odd: odd.name)
def test_every_accepted_odd_file_reads_as_its_plain_copy(
    embedder: CnnEmbedder, odd: OddFile
) -> None:
    """The default's whole reading of an upload, embedding and local features, on every kind of
    file the service accepts (tests/test_api/test_odd_files.py sends them through every
    endpoint, scored with `perceptual`)."""
    assert odd.displayed is not None

    def analysed(data: bytes) -> tuple[NDArray[np.float32], LocalFeatures]:
        result = analyse_image(
            data,
            allowed_formats=frozenset(BY_NAME),
            max_pixels=10**8,
            embedder=embedder,
            local_features=True,
        )
        assert result.local_features is not None
        return result.embedding, LocalFeatures.from_bytes(result.local_features)

    vector, features = analysed(odd.data)
    plain_vector, plain_features = analysed(encode(odd.displayed, "PNG"))

    # Lossy files of these small pictures score 0.88 (a 96 x 64 JPEG) to 1; a quarter turn of
    # them scores 0.72 to 0.76.
    assert float(vector @ plain_vector) >= 0.85
    assert verify(features, plain_features) is not None
