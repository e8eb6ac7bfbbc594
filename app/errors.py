"""Every error the service answers with, in one table: status, stable code, headers, and the
description the OpenAPI document shows. `add_error_handlers` renders them all in one JSON shape,
`{"detail": ..., "code": ...}`; `error_responses` documents them per route.

Services raise `ServiceError` subclasses; each names its row of the table, and a subclass
inherits its parent's row (the lookup follows the class's MRO).
"""

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas.errors import ErrorResponse, ValidationErrorResponse

logger = logging.getLogger("app")

RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True)
class ErrorKind:
    status: int
    code: str
    description: str  # for the OpenAPI document
    headers: Mapping[str, str] = field(default_factory=dict)


_RETRY = {"Retry-After": RETRY_AFTER_SECONDS}

NOT_AUTHORIZED = ErrorKind(
    401,
    "not_authorized",
    "The request needs an API key (`Authorization: Bearer <key>` or `X-API-Key`): "
    "AUTH_REQUIRED is on, or ADMIN_TOKEN guards this endpoint",
    {"WWW-Authenticate": "Bearer"},
)
INVALID_API_KEY = ErrorKind(
    401,
    "invalid_api_key",
    "The API key (or ADMIN_TOKEN) sent is unknown or revoked",
    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
)
INSUFFICIENT_SCOPE = ErrorKind(
    403,
    "insufficient_scope",
    "The API key's scope does not allow this request (read < write < admin)",
    {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
)
RATE_LIMITED = ErrorKind(
    429,
    "rate_limited",
    "The API key has used up its request rate; retry after Retry-After seconds",
    {"Retry-After": "1"},
)
SERVER_BUSY = ErrorKind(
    503,
    "server_busy",
    "Too many images are waiting to be decoded (UPLOAD_QUEUE_LIMIT); refused before the body "
    "was read; retry after Retry-After seconds",
    {"Retry-After": "1"},
)
IMAGE_NOT_FOUND = ErrorKind(404, "image_not_found", "No image with this id")
IMAGE_FILE_MISSING = ErrorKind(
    404, "image_file_missing", "The image's file is missing from storage"
)
EMBEDDING_OUTDATED = ErrorKind(
    409,
    "embedding_outdated",
    "The image was embedded with another model; run `python -m app reembed`",
)
DUPLICATE_GROUP_NOT_FOUND = ErrorKind(
    404,
    "duplicate_group_not_found",
    "No duplicate group with this id (resolved, split, or merged into another: list them again)",
)
GROUP_CHANGED = ErrorKind(
    412,
    "group_changed",
    "The group's members changed since it was read (If-Match); read it again",
)
NOT_A_GROUP_MEMBER = ErrorKind(
    422, "not_a_group_member", "`keep` names an image that is not a member of the group"
)
FILE_TOO_LARGE = ErrorKind(413, "file_too_large", "The file exceeds MAX_FILE_SIZE")
UNSUPPORTED_IMAGE_FORMAT = ErrorKind(
    415, "unsupported_image_format", "The bytes are not an accepted image format"
)
EMPTY_FILE = ErrorKind(422, "empty_file", "The uploaded file is empty")
INVALID_IMAGE = ErrorKind(422, "invalid_image", "A corrupt or truncated image")
IMAGE_TOO_LARGE = ErrorKind(422, "image_too_large", "Too many pixels or frames")
VALIDATION_ERROR = ErrorKind(422, "validation_error", "An invalid parameter (see `errors`)")
DATABASE_UNAVAILABLE = ErrorKind(
    503, "database_unavailable", "The database is unavailable; retry after Retry-After", _RETRY
)
STORAGE_UNAVAILABLE = ErrorKind(
    503, "storage_unavailable", "Image storage is unavailable; retry after Retry-After", _RETRY
)
STORAGE_FULL = ErrorKind(507, "storage_full", "No space left to store the image", _RETRY)
RANGE_NOT_SATISFIABLE = ErrorKind(
    416, "range_not_satisfiable", "The Range header starts past the end of the file"
)
BAD_REQUEST = ErrorKind(400, "bad_request", "Malformed request body")
INTERNAL_ERROR = ErrorKind(500, "internal_error", "An unexpected error (logged with its id)")
# Statuses Starlette raises itself (unknown path, wrong method, ...): their codes.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

ERROR_KINDS: tuple[ErrorKind, ...] = (
    NOT_AUTHORIZED,
    INVALID_API_KEY,
    INSUFFICIENT_SCOPE,
    RATE_LIMITED,
    SERVER_BUSY,
    IMAGE_NOT_FOUND,
    IMAGE_FILE_MISSING,
    EMBEDDING_OUTDATED,
    DUPLICATE_GROUP_NOT_FOUND,
    GROUP_CHANGED,
    NOT_A_GROUP_MEMBER,
    FILE_TOO_LARGE,
    UNSUPPORTED_IMAGE_FORMAT,
    EMPTY_FILE,
    INVALID_IMAGE,
    IMAGE_TOO_LARGE,
    VALIDATION_ERROR,
    DATABASE_UNAVAILABLE,
    STORAGE_UNAVAILABLE,
    STORAGE_FULL,
    RANGE_NOT_SATISFIABLE,
    BAD_REQUEST,
    INTERNAL_ERROR,
)


class ServiceError(Exception):
    """Base of the errors services raise; `kind` is the row of the table it answers with."""

    kind: ClassVar[ErrorKind] = INTERNAL_ERROR

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}  # besides the kind's own

    @property
    def code(self) -> str:
        return self.kind.code


class ImageNotFound(ServiceError):
    kind = IMAGE_NOT_FOUND

    def __init__(self, image_id: object) -> None:
        super().__init__(f"Image {image_id} not found")


class ImageFileMissing(ServiceError):
    kind = IMAGE_FILE_MISSING

    def __init__(self, image_id: object) -> None:
        super().__init__(f"The file of image {image_id} is missing from storage")


class EmbeddingOutdated(ServiceError):
    kind = EMBEDDING_OUTDATED

    def __init__(self, image_id: object, stored_model: str, current_model: str) -> None:
        super().__init__(
            f"Image {image_id} was embedded with the {stored_model!r} model, not the current "
            f"{current_model!r}; run `python -m app reembed` to bring it up to date"
        )


class DuplicateGroupNotFound(ServiceError):
    kind = DUPLICATE_GROUP_NOT_FOUND

    def __init__(self, group_id: object) -> None:
        super().__init__(
            f"Duplicate group {group_id} not found; it may have been resolved, split or merged "
            "into another group: list the groups again"
        )


class GroupChanged(ServiceError):
    kind = GROUP_CHANGED

    def __init__(self, group_id: object) -> None:
        super().__init__(
            f"The members of duplicate group {group_id} changed since it was read (If-Match); "
            "read it again before resolving it"
        )


class NotAGroupMember(ServiceError):
    kind = NOT_A_GROUP_MEMBER

    def __init__(self, image_id: object, group_id: object) -> None:
        super().__init__(f"Image {image_id} is not a member of duplicate group {group_id}")


class FileTooLarge(ServiceError):
    kind = FILE_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"File exceeds the maximum upload size of {limit} bytes")


class EmptyFile(ServiceError):
    kind = EMPTY_FILE

    def __init__(self) -> None:
        super().__init__("The uploaded file is empty")


class UnsupportedImageFormat(ServiceError):
    kind = UNSUPPORTED_IMAGE_FORMAT


class InvalidImage(ServiceError):
    kind = INVALID_IMAGE


class ImageTooLarge(ServiceError):
    kind = IMAGE_TOO_LARGE


class StorageFull(ServiceError):
    kind = STORAGE_FULL

    def __init__(self) -> None:
        super().__init__("No space left to store the image")


class StorageUnavailable(ServiceError):
    kind = STORAGE_UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("Image storage is unavailable; retry shortly")


class RangeNotSatisfiable(ServiceError):
    kind = RANGE_NOT_SATISFIABLE

    def __init__(self, size: int) -> None:
        super().__init__(
            f"The file has {size} bytes; the range asked for starts past them",
            {"Content-Range": f"bytes */{size}"},
        )


class SchemaMismatch(Exception):
    """The database schema does not match the configuration (start-up only, never an answer)."""


class RebuildRunning(Exception):
    """Another `duplicates --rebuild` holds the rebuild lock (the command line's, never an
    answer)."""

    def __init__(self) -> None:
        super().__init__("another `duplicates --rebuild` is running on this database")


class KeyNameTaken(Exception):
    """An active API key already has this name (the command line's, never an answer)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an active key is already named {name!r}; revoke it first")


def error_responses(*kinds: ErrorKind) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route that can answer with `kinds` (grouped by status)."""
    by_status: dict[int, list[ErrorKind]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {
        status: {
            "model": ValidationErrorResponse if status == 422 else ErrorResponse,
            "description": "; ".join(f"{kind.description} (`{kind.code}`)" for kind in group),
        }
        for status, group in sorted(by_status.items())
    }


# What a route that needs a key can be refused with (app/api/access.py).
ACCESS_ERRORS = (NOT_AUTHORIZED, INVALID_API_KEY, INSUFFICIENT_SCOPE, RATE_LIMITED)

# What an upload can be refused with, for the routes that read an image from the request.
UPLOAD_ERRORS = (
    SERVER_BUSY,
    BAD_REQUEST,
    FILE_TOO_LARGE,
    UNSUPPORTED_IMAGE_FORMAT,
    EMPTY_FILE,
    INVALID_IMAGE,
    IMAGE_TOO_LARGE,
    VALIDATION_ERROR,
    DATABASE_UNAVAILABLE,
)


INTERNAL_ERROR_DETAIL = "Internal server error"


def unexpected_error_response() -> JSONResponse:
    """The answer to an error nothing else handled (app/core/observability.py sends it, logged
    there with the request's id)."""
    body = {"detail": INTERNAL_ERROR_DETAIL, "code": INTERNAL_ERROR.code}
    return JSONResponse(body, status_code=INTERNAL_ERROR.status)


def error_response(
    request: Request,
    kind: ErrorKind,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    """The one error body: `{"detail", "code"}` (plus `extra`), with the kind's headers
    (`headers` adds to them or replaces some: a Retry-After worked out for this request, the
    Content-Range of a range past the end)."""
    request.state.error_code = kind.code  # for the metrics of refused uploads
    return JSONResponse(
        {"detail": detail, "code": kind.code, **extra},
        status_code=kind.status,
        headers={**kind.headers, **(headers or {})} or None,
    )


# FastAPI's check of a File() parameter names the Python class it got instead.
_NOT_A_FILE = re.compile(r"Expected UploadFile, received: .*")
_PYTHON_CLASS = re.compile(r"<class '[^']*'>")


def _plain_message(message: str) -> str:
    """A validation message without Python's names for types."""
    if _NOT_A_FILE.search(message):
        return "Expected a file (a multipart part with a filename), got a plain form field"
    return _PYTHON_CLASS.sub("a value of another type", message)


def _with_parser_reason(exc: StarletteHTTPException) -> str:
    """The HTTP error's detail; for a multipart body Starlette could not parse, with the
    parser's own reason (Starlette raises it from python-multipart's error)."""
    detail = str(exc.detail)
    parser_error = getattr(exc.__context__, "__cause__", None)
    if isinstance(parser_error, FormParserError):
        return f"{detail.rstrip('.')}: {parser_error}"
    return detail


def add_error_handlers(
    app: FastAPI,
    *,
    max_file_size: int,
    database_errors: tuple[type[Exception], ...],
    is_database_unavailable: Callable[[BaseException], bool],
) -> None:
    """Map exceptions to the table: service errors by their kind, request validation,
    Starlette's own HTTP errors, an unreachable database (503). Anything else is answered by
    app/core/observability.py (500), which knows the request's id."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.kind, exc.detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Inputs are not echoed back: they may be huge or binary.
        errors = [
            {"loc": list(error["loc"]), "msg": _plain_message(error["msg"]), "type": error["type"]}
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "Invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        detail = f"Invalid request: {where}: {first['msg']}"
        return error_response(request, VALIDATION_ERROR, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return error_response(request, FILE_TOO_LARGE, FileTooLarge(max_file_size).detail)
        kind = ErrorKind(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), "")
        response = error_response(request, kind, _with_parser_reason(exc))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if is_database_unavailable(exc):
            logger.warning("database unavailable: %s", type(exc).__name__)
            return error_response(
                request, DATABASE_UNAVAILABLE, "The database is unavailable; retry shortly"
            )
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, INTERNAL_ERROR, INTERNAL_ERROR_DETAIL)

    # Registered per class so that an unreachable database is an ordinary 503, not a crash.
    for error_class in database_errors:
        app.add_exception_handler(error_class, database_error)
