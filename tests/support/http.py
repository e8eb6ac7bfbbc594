"""HTTP helpers: upload a file, check an error body, list the files the service stored."""

from pathlib import Path
from typing import Any

from httpx import AsyncClient

from app.core.config import Settings

UPLOAD = "/api/v1/images/upload"


async def upload(
    client: AsyncClient, data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg"
) -> Any:
    return await client.post(UPLOAD, files={"file": (filename, data, content_type)})


def stored_files(settings: Settings) -> list[Path]:
    """Every file under the image store (images, staging leftovers, thumbnails)."""
    return [path for path in settings.image_dir.rglob("*") if path.is_file()]


def assert_error(response: Any, status: int, code: str) -> None:
    """The one error shape: `status`, `code`, and a non-empty `detail` for people."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
