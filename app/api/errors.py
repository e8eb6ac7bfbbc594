"""OpenAPI descriptions of the error responses, shared by the routers."""

from typing import Any

from app.schemas.errors import ErrorResponse, ValidationErrorResponse


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request body",
        401: "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`",
        404: "No image with this id",
        409: "The image was embedded with another model; run `python -m app reembed` "
        "(code `embedding_outdated`)",
        413: "The file exceeds MAX_FILE_SIZE (code `file_too_large`)",
        415: "The bytes are not an accepted image format (code `unsupported_image_format`)",
        422: "Invalid parameter (`validation_error`), or an empty (`empty_file`), corrupt or "
        "truncated (`invalid_image`) or oversized (`image_too_large`) image",
        503: "The database (`database_unavailable`) or the image storage "
        "(`storage_unavailable`) is unavailable; retry after Retry-After",
        507: "No space left to store the image (code `storage_full`)",
    }
    return {
        status: {
            "model": ValidationErrorResponse if status == 422 else ErrorResponse,
            "description": descriptions[status],
        }
        for status in statuses
    }
