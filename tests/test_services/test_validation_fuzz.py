"""A bounded fuzz run of the validation path: mutated and random bytes never crash it; every
rejection is one of the documented domain errors."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ServiceError
from app.imaging.analysis import analyse_image
from app.imaging.embeddings import PerceptualEmbedder
from app.imaging.formats import BY_NAME
from tests.support.images import encode, photo

SEEDS = [
    encode(photo(40, 30), "JPEG"),
    encode(photo(40, 30), "PNG"),
    encode(photo(40, 30), "GIF"),
    encode(photo(40, 30), "BMP"),
    encode(photo(40, 30), "WEBP"),
    encode(photo(40, 30), "TIFF", compression="tiff_lzw"),
    encode(photo(40, 30), "AVIF"),
    encode(photo(40, 30), "HEIF"),
]
EMBEDDER = PerceptualEmbedder(512)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position:]
            if not data:
                break
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_images(), st.binary(max_size=256)))
def test_validation_never_fails_with_anything_but_a_domain_error(data: bytes) -> None:
    try:
        result = analyse_image(
            data,
            allowed_formats=frozenset(BY_NAME),
            max_pixels=5_000_000,
            max_frames=100,
            embedder=EMBEDDER,
        )
    except ServiceError:
        return
    assert result.embedding.shape == (512,)
