"""Image endpoints: upload, read, list, similar, delete. Each declares the key scope it needs
(enforced by app/api/access.py when AUTH_REQUIRED is on)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import AwareDatetime

from app.api.access import requires
from app.api.deps import (
    ConnectionDep,
    ImageId,
    PageLimit,
    ResourcesDep,
    SimilarLimit,
    Skip,
    Threshold,
    ThumbnailSize,
)
from app.core.storage import ByteRange, content_disposition
from app.errors import (
    ACCESS_ERRORS,
    DATABASE_UNAVAILABLE,
    EMBEDDING_OUTDATED,
    IMAGE_FILE_MISSING,
    IMAGE_NOT_FOUND,
    INVALID_IMAGE,
    RANGE_NOT_SATISFIABLE,
    STORAGE_FULL,
    STORAGE_UNAVAILABLE,
    UPLOAD_ERRORS,
    VALIDATION_ERROR,
    RangeNotSatisfiable,
    error_responses,
)
from app.imaging.formats import FORMATS, ContentType
from app.imaging.thumbnail import MEDIA_TYPES, ThumbnailFormat
from app.schemas.image import (
    ImageList,
    ImageRead,
    ImageUploadResponse,
    SimilarImage,
    SimilarImagesResponse,
)
from app.services import duplicates, images, ingest, search
from app.services.search import SearchOptions

router = APIRouter()


@router.post(
    "/upload",
    dependencies=[requires("write")],
    status_code=status.HTTP_201_CREATED,
    response_model=ImageUploadResponse,
    summary="Upload an image",
    responses={
        200: {"model": ImageUploadResponse, "description": "These bytes were already stored"},
        **error_responses(*ACCESS_ERRORS, *UPLOAD_ERRORS, STORAGE_UNAVAILABLE, STORAGE_FULL),
    },
)
async def upload_image(
    file: Annotated[
        UploadFile,
        File(
            description="An image: JPEG, PNG, HEIC/HEIF, WebP, AVIF, TIFF, GIF or BMP (see /info)"
        ),
    ],
    response: Response,
    connection: ConnectionDep,
    resources: ResourcesDep,
) -> ImageUploadResponse:
    policy = resources.upload_policy
    # The request body is already capped by the app's body limit; read one byte past the file
    # limit so the service can tell "exactly at the limit" from "over it".
    data = await file.read(policy.max_file_size + 1)
    result = await ingest.ingest_image(
        connection,
        data=data,
        filename=file.filename,
        policy=policy,
        store=resources.store,
        embedder=resources.embedder,
        decode_slots=resources.decode_slots,
    )
    resources.metrics.embedding_seconds.observe(result.analysis_seconds)
    # After the upload's commit; for bytes already stored, only if their links were never found.
    await duplicates.link_image(
        connection,
        result.image_id,
        duplicates.link_options(resources.search_defaults, resources.embedder.name),
        new=result.created,
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ImageUploadResponse(
        id=result.image_id,
        filename=result.filename,
        message="Image uploaded and processed successfully"
        if result.created
        else "Image already stored; returning the existing record",
        processing_status="completed",
    )


# Registered with and without the trailing slash: both answer directly, no redirect.
@router.get(
    "/",
    dependencies=[requires("read")],
    response_model=ImageList,
    summary="List images, newest first",
    responses=error_responses(*ACCESS_ERRORS, VALIDATION_ERROR, DATABASE_UNAVAILABLE),
)
@router.get("", response_model=ImageList, include_in_schema=False)
async def list_images(
    connection: ConnectionDep,
    skip: Skip = 0,
    limit: PageLimit = 20,
    content_type: Annotated[
        ContentType | None,
        Query(description="Only images of this content type"),
    ] = None,
    uploaded_after: Annotated[
        AwareDatetime | None, Query(description="Only images uploaded at or after (ISO 8601)")
    ] = None,
    uploaded_before: Annotated[
        AwareDatetime | None, Query(description="Only images uploaded before (ISO 8601)")
    ] = None,
) -> ImageList:
    items, total = await images.list_images(
        connection,
        skip=skip,
        limit=limit,
        where=images.ImageFilter(content_type, uploaded_after, uploaded_before),
    )
    return ImageList(
        items=[ImageRead.model_validate(item) for item in items],
        total=total,
        skip=skip,
        limit=limit,
    )


@router.get(
    "/{image_id}",
    dependencies=[requires("read")],
    response_model=ImageRead,
    summary="Get an image's metadata",
    responses=error_responses(
        *ACCESS_ERRORS, IMAGE_NOT_FOUND, VALIDATION_ERROR, DATABASE_UNAVAILABLE
    ),
)
async def get_image(image_id: ImageId, connection: ConnectionDep) -> ImageRead:
    return ImageRead.model_validate(await images.get_image(connection, image_id))


@router.get(
    "/{image_id}/similar",
    dependencies=[requires("read")],
    response_model=SimilarImagesResponse,
    summary="Find the stored images most similar to this one",
    responses=error_responses(
        *ACCESS_ERRORS, IMAGE_NOT_FOUND, EMBEDDING_OUTDATED, VALIDATION_ERROR, DATABASE_UNAVAILABLE
    ),
)
async def find_similar_images(
    image_id: ImageId,
    connection: ConnectionDep,
    resources: ResourcesDep,
    limit: SimilarLimit = None,
    threshold: Threshold = None,
) -> SimilarImagesResponse:
    options = SearchOptions.for_request(
        resources.search_defaults, resources.embedder.name, limit, threshold
    )
    matches = await search.find_similar_images(
        connection, image_id, options, slots=resources.decode_slots
    )
    return similar_images_response(image_id, matches)


@router.delete(
    "/{image_id}",
    dependencies=[requires("write")],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an image and its file",
    responses=error_responses(
        *ACCESS_ERRORS, IMAGE_NOT_FOUND, VALIDATION_ERROR, DATABASE_UNAVAILABLE
    ),
)
async def delete_image(
    image_id: ImageId, connection: ConnectionDep, resources: ResourcesDep
) -> None:
    await images.delete_image(connection, image_id, store=resources.store)
    await duplicates.settle_groups(connection)  # its group may have split


@router.post(
    "/search",
    dependencies=[requires("read")],
    response_model=SimilarImagesResponse,
    summary="Find the stored images most similar to an uploaded image, without storing it",
    responses=error_responses(*ACCESS_ERRORS, *UPLOAD_ERRORS),
)
async def search_by_image(
    file: Annotated[UploadFile, File(description="The image to search with; it is not stored")],
    connection: ConnectionDep,
    resources: ResourcesDep,
    limit: Annotated[
        int | None, Form(ge=1, le=100, description="Most results (default MAX_SIMILAR_RESULTS)")
    ] = None,
    threshold: Annotated[
        float | None,
        Form(ge=-1.0, le=1.0, allow_inf_nan=False, description="Lowest cosine similarity"),
    ] = None,
) -> SimilarImagesResponse:
    analysed = await ingest.analyse_upload(
        await file.read(resources.upload_policy.max_file_size + 1),
        policy=resources.upload_policy,
        embedder=resources.embedder,
        decode_slots=resources.decode_slots,
    )
    options = SearchOptions.for_request(
        resources.search_defaults, resources.embedder.name, limit, threshold
    )
    matches = await search.search_by_image(
        connection,
        analysed.embedding,
        analysed.content_hash,
        options,
        local_features=analysed.local_features,
        slots=resources.decode_slots,
    )
    return similar_images_response(None, matches)


def _not_modified(if_none_match: str | None, etag: str) -> Response | None:
    """A 304 when the client already has this version (If-None-Match names the ETag)."""
    if not if_none_match:
        return None
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    if "*" in candidates or etag in candidates:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return None


_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400"}
_IMAGE_CONTENT: dict[str, Any] = {
    "content": {image_format.content_type: {} for image_format in FORMATS}
}


@router.get(
    "/{image_id}/file",
    dependencies=[requires("read")],
    response_class=StreamingResponse,
    summary="The original file, as uploaded",
    responses={
        200: {**_IMAGE_CONTENT, "description": "The bytes as uploaded; ETag is their SHA-256"},
        206: {**_IMAGE_CONTENT, "description": "The byte range the Range header asked for"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        307: {"description": "FILE_REDIRECT=signed: a short-lived signed URL of the object"},
        **error_responses(
            *ACCESS_ERRORS,
            IMAGE_NOT_FOUND,
            IMAGE_FILE_MISSING,
            RANGE_NOT_SATISFIABLE,
            VALIDATION_ERROR,
            DATABASE_UNAVAILABLE,
            STORAGE_UNAVAILABLE,
        ),
    },
)
async def get_image_file(
    image_id: ImageId,
    connection: ConnectionDep,
    resources: ResourcesDep,
    if_none_match: Annotated[str | None, Header()] = None,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    image = await images.get_image(connection, image_id)
    etag = f'"{image.content_hash}"'
    if not_modified := _not_modified(if_none_match, etag):
        return not_modified
    settings = resources.settings
    if settings.FILE_REDIRECT == "signed" and image.file_path is not None:
        expires_in = timedelta(seconds=settings.FILE_REDIRECT_EXPIRY_SECONDS)
        url = await resources.store.signed_url(image.file_path, expires_in)
        # Never cached: the URL stops working when it expires.
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    byte_range = (
        None if if_range not in {None, etag} else _byte_range(range_header, image.file_size)
    )
    reader = await images.open_stored_file(image, store=resources.store, byte_range=byte_range)
    headers = {
        "ETag": etag,
        "Content-Length": str(reader.size),
        "Content-Disposition": content_disposition(image.filename),
        "Accept-Ranges": "bytes",
        **_FILE_HEADERS,
    }
    if byte_range is not None:
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{image.file_size}"
    return StreamingResponse(
        reader.chunks,
        status_code=200 if byte_range is None else 206,
        media_type=image.content_type,
        headers=headers,
    )


def _byte_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range `bytes=first-last`, `bytes=first-` or `bytes=-suffix` asks for (RFC
    9110, section 14), as (start, end exclusive). None, meaning the whole file, for no header,
    one that cannot be read, or several ranges (which a server may answer in full).
    RangeNotSatisfiable when it starts past the end."""
    unit, _, spec = (header or "").partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or not (first or last):
        return None
    if not all(part.isdigit() for part in (first, last) if part):
        return None
    if not first:  # the last `last` bytes
        if int(last) == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(size, int(last) + 1) if last else size


@router.get(
    "/{image_id}/thumbnail",
    dependencies=[requires("read")],
    response_class=Response,
    summary="A thumbnail of the picture as displayed (cached)",
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/webp": {}},
            "description": "No larger than `size` on its longer side; first frame, EXIF "
            "orientation applied, transparency on white",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **error_responses(
            *ACCESS_ERRORS,
            IMAGE_NOT_FOUND,
            IMAGE_FILE_MISSING,
            INVALID_IMAGE,
            VALIDATION_ERROR,
            DATABASE_UNAVAILABLE,
            STORAGE_UNAVAILABLE,
        ),
    },
)
async def get_thumbnail(
    image_id: ImageId,
    connection: ConnectionDep,
    resources: ResourcesDep,
    size: ThumbnailSize = 256,
    format: Annotated[ThumbnailFormat, Query(description="jpeg or webp")] = "jpeg",
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    image = await images.get_image(connection, image_id)
    etag = f'"{image.content_hash}-{size}-{format}"'
    if not_modified := _not_modified(if_none_match, etag):
        return not_modified
    thumbnail = await images.cached_thumbnail(
        connection,
        image,
        store=resources.store,
        size=size,
        image_format=format,
        decode_slots=resources.decode_slots,
    )
    return Response(
        thumbnail, media_type=MEDIA_TYPES[format], headers={"ETag": etag, **_FILE_HEADERS}
    )


def similar_images_response(
    query_image_id: uuid.UUID | None, matches: list[search.SimilarMatch]
) -> SimilarImagesResponse:
    return SimilarImagesResponse(
        query_image_id=query_image_id,
        similar_images=[SimilarImage.model_validate(match) for match in matches],
        total_results=len(matches),
        search_timestamp=datetime.now(UTC),
    )
