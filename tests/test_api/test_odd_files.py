"""Every file of the odd-file corpus (tests/support/odd_files.py) through every endpoint: the
upload, the record, the file, thumbnails in each format and size, similar, search, the
listing's filter and reembed answer as they should, and never with a 5xx; on the local store
and on S3 (a real SeaweedFS)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.core.database import create_engine
from app.core.resources import create_store
from app.imaging.embeddings import PerceptualEmbedder
from app.services.reembed import reembed_images
from tests.support.app import DatabaseFactory, MakeClient, app_client, settings_on_new_database
from tests.support.http import UPLOAD, assert_error, upload
from tests.support.images import encode
from tests.support.odd_files import ACCEPTED, BY_NAME, ODD_FILES, OddFile, decoded, mean_difference

THUMBNAIL_SIZES = (16, 256, 1024)
STATUS_OF = {"invalid_image": 422, "unsupported_image_format": 415}


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings overrides for the local store or for S3 (a real SeaweedFS)."""
    return request.getfixturevalue("s3_settings") if request.param == "s3" else {}


@pytest.fixture
async def any_store_client(
    make_client: MakeClient, store_settings: dict[str, str]
) -> AsyncIterator[AsyncClient]:
    """The app on the test's transaction, storing on the local store or on S3."""
    async with make_client(**store_settings) as client:
        yield client


@pytest.fixture
async def perceptual_client(
    make_client: MakeClient, store_settings: dict[str, str]
) -> AsyncIterator[AsyncClient]:
    """As `any_store_client`, embedding with `perceptual`: it tells these pictures from their
    turned copies (a half turn scores about 0.25), where the default `cnn` scores a half turn
    0.91, no higher than a JPEG of them (tests/test_services/test_cnn_embedder.py reads the
    corpus with `cnn`). So a score of at least 0.98 shows the picture was read as displayed."""
    async with make_client(EMBEDDING_MODEL="perceptual", **store_settings) as client:
        yield client


def contains(record: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(
        contains(record.get(key, {}), value)
        if isinstance(value, dict)
        else record.get(key) == value
        for key, value in expected.items()
    )


def thumbnail_of(picture: Image.Image, size: int) -> Image.Image:
    small = picture.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return small


async def check_thumbnails(client: AsyncClient, image_id: str, odd: OddFile) -> None:
    assert odd.displayed is not None
    for image_format in ("jpeg", "webp"):
        for size in THUMBNAIL_SIZES:
            response = await client.get(
                f"/api/v1/images/{image_id}/thumbnail?size={size}&format={image_format}"
            )
            assert response.status_code == 200, (size, image_format, response.text)
            assert response.headers["content-type"] == f"image/{image_format}"
            picture = decoded(response.content)
            expected = thumbnail_of(odd.displayed, size)
            # JPEG is decoded at a reduced scale first, which may round a side by one pixel.
            assert abs(picture.width - expected.width) <= 1, (size, picture.size)
            assert abs(picture.height - expected.height) <= 1, (size, picture.size)
            if size == 256:
                # Upright and in the right colours: compared at 32 x 32, where the thumbnail's
                # own lossy compression averages out and a wrong turn or colour does not.
                small, box = (32, 32), Image.Resampling.BOX
                assert mean_difference(picture.resize(small, box), expected.resize(small, box)) <= (
                    odd.tolerance + 6
                )


@pytest.mark.parametrize("odd", ODD_FILES, ids=lambda odd: odd.name)
async def test_an_odd_file_is_served_by_every_endpoint(
    perceptual_client: AsyncClient, odd: OddFile
) -> None:
    client = perceptual_client
    uploaded = await upload(client, odd.data, f"{odd.name}.bin", "application/octet-stream")
    searched = await client.post(
        "/api/v1/images/search", files={"file": ("query.bin", odd.data)}, data={"threshold": "-1"}
    )
    if odd.refused:
        assert_error(uploaded, STATUS_OF[odd.refused], odd.refused)
        assert_error(searched, STATUS_OF[odd.refused], odd.refused)
        return

    assert uploaded.status_code == 201, uploaded.text
    image_id = uploaded.json()["id"]
    record = (await client.get(f"/api/v1/images/{image_id}")).json()
    assert record["content_type"] == odd.content_type
    assert (record["width"], record["height"]) == odd.size
    assert contains(record["metadata"], odd.metadata), record["metadata"]

    original = await client.get(f"/api/v1/images/{image_id}/file")
    assert original.status_code == 200
    assert original.content == odd.data
    assert original.headers["content-type"] == odd.content_type

    await check_thumbnails(client, image_id, odd)

    # Its plain copy (a PNG of what a viewer shows, never the same bytes) is its near duplicate.
    assert odd.displayed is not None
    labelled = PngInfo()
    labelled.add_text("Comment", "plain copy")
    plain_copy = encode(odd.displayed, "PNG", pnginfo=labelled)
    copy = await upload(client, plain_copy, "copy.png", "image/png")
    assert copy.status_code == 201
    # All 100 best: flat pictures that other tests of the run left in the shared database can
    # score as high as this copy of a picture with next to no detail (a one-pixel strip).
    similar = (await client.get(f"/api/v1/images/{image_id}/similar?limit=100")).json()
    matches = {match["id"]: match for match in similar["similar_images"]}
    assert matches[copy.json()["id"]]["match"] == "near_duplicate"
    assert matches[copy.json()["id"]]["similarity_score"] >= 0.98

    assert searched.status_code == 200
    assert searched.json()["similar_images"][0]["id"] == image_id
    assert searched.json()["similar_images"][0]["match"] == "exact"

    listing = (await client.get(f"/api/v1/images/?content_type={odd.content_type}")).json()
    assert image_id in {item["id"] for item in listing["items"]}


async def test_reembed_reads_every_accepted_odd_file(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, url = await settings_on_new_database(
        create_database, tmp_path, "odd_files_reembed", EMBEDDING_MODEL="hash"
    )
    async with app_client(settings) as client:
        for odd in ACCEPTED:
            assert (await upload(client, odd.data, odd.name)).status_code in {200, 201}
    engine = create_engine(url)
    try:
        progress = await reembed_images(
            engine,
            store=await create_store(settings),
            embedder=PerceptualEmbedder(512),
            max_pixels=settings.MAX_IMAGE_PIXELS,
        )
    finally:
        await engine.dispose()

    distinct = len({odd.data for odd in ACCEPTED})
    assert (progress.total, progress.updated, progress.failed) == (distinct, distinct, 0)


@pytest.mark.parametrize(
    ("name", "settings", "code"),
    [
        ("heic", {"MAX_IMAGE_PIXELS": 10_000}, "image_too_large"),
        ("avif", {"MAX_IMAGE_PIXELS": 10_000}, "image_too_large"),
        ("webp_lossy", {"MAX_IMAGE_PIXELS": 10_000}, "image_too_large"),
        ("tiff_little_endian", {"MAX_IMAGE_PIXELS": 10_000}, "image_too_large"),
        ("webp_animated", {"MAX_FRAMES": 2}, "image_too_large"),
        ("tiff_lzw_three_pages", {"MAX_FRAMES": 2}, "image_too_large"),
        ("heic", {"ALLOWED_EXTENSIONS": ".jpg,.webp"}, "unsupported_image_format"),
        ("tiff_big_endian", {"ALLOWED_EXTENSIONS": ".webp"}, "unsupported_image_format"),
    ],
)
async def test_phone_web_and_scanner_formats_obey_the_same_limits(
    make_client: MakeClient, name: str, settings: dict[str, object], code: str
) -> None:
    async with make_client(**settings) as client:
        response = await upload(client, BY_NAME[name].data, name)
    assert_error(response, 415 if code == "unsupported_image_format" else 422, code)


async def test_a_5000_character_filename_is_shortened_not_refused(
    any_store_client: AsyncClient,
) -> None:
    # Not ASCII: on S3 the shortened name travels percent-encoded in Content-Disposition.
    name = "urlaub-" + "ü" * 4993 + ".heic"
    response = await upload(any_store_client, BY_NAME["heic"].data, name, "image/heic")

    assert response.status_code == 201, response.text
    image = f"/api/v1/images/{response.json()['id']}"
    record = (await any_store_client.get(image)).json()
    assert record["filename"] == name[:255]
    assert record["original_filename"] == name[:255]
    file = await any_store_client.get(f"{image}/file")
    assert file.content == BY_NAME["heic"].data
    assert file.headers["content-disposition"].endswith("%C3%BC" * (255 - len("urlaub-")))


async def test_a_part_header_beyond_32_kib_is_a_400_that_says_why(client: AsyncClient) -> None:
    response = await upload(client, BY_NAME["heic"].data, "x" * 40_000 + ".heic")
    assert_error(response, 400, "bad_request")
    assert response.json()["detail"] == "Invalid multipart data: Maximum header size exceeded"


async def test_a_plain_form_field_instead_of_a_file_is_a_422_without_python_names(
    client: AsyncClient,
) -> None:
    response = await client.post(UPLOAD, data={"file": "holiday.jpg"})

    assert_error(response, 422, "validation_error")
    body = response.json()
    assert body["detail"] == (
        "Invalid request: body.file: "
        "Expected a file (a multipart part with a filename), got a plain form field"
    )
    assert "class" not in response.text and "UploadFile" not in response.text
