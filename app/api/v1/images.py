"""Image endpoints: upload, read, list, similar, delete."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import AwareDatetime
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    EmbedderDep,
    ImageId,
    ImageStoreDep,
    ImageWorkersDep,
    MetricsDep,
    PageLimit,
    ReadSessionDep,
    SearchConnectionDep,
    SessionDep,
    SettingsDep,
    SimilarLimit,
    Skip,
    Threshold,
    ThumbnailSize,
    TransactionsDep,
)
from app.api.errors import error_responses
from app.core.config import Settings
from app.schemas.image import (
    ImageList,
    ImageRead,
    ImageUploadResponse,
    SimilarImage,
    SimilarImagesResponse,
)
from app.services import images, thumbnails, vector_service
from app.services.embeddings import Embedder

router = APIRouter()


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=ImageUploadResponse,
    summary="Upload an image",
    responses={
        200: {"model": ImageUploadResponse, "description": "These bytes were already stored"},
        **error_responses(400, 413, 415, 422, 503, 507),
    },
)
async def upload_image(
    file: Annotated[UploadFile, File(description="A JPEG or PNG image (GIF, BMP if allowed)")],
    response: Response,
    transactions: TransactionsDep,
    settings: SettingsDep,
    store: ImageStoreDep,
    embedder: EmbedderDep,
    image_workers: ImageWorkersDep,
    metrics: MetricsDep,
) -> ImageUploadResponse:
    # The request body is already capped by the app's body limit; read one byte past the file
    # limit so the service can tell "exactly at the limit" from "over it".
    data = await file.read(settings.MAX_FILE_SIZE + 1)
    result = await images.ingest_image(
        transactions,
        data=data,
        filename=file.filename,
        limits=upload_limits(settings),
        store=store,
        embedder=embedder,
        image_workers=image_workers,
    )
    metrics.embedding_seconds.observe(result.analysis_seconds)
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


@router.get(
    "/",
    response_model=ImageList,
    summary="List images, newest first",
    responses=error_responses(422, 503),
)
async def list_images(
    session: ReadSessionDep,
    skip: Skip = 0,
    limit: PageLimit = 20,
    content_type: Annotated[
        Literal["image/jpeg", "image/png", "image/gif", "image/bmp"] | None,
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
        session,
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
    response_model=ImageRead,
    summary="Get an image's metadata",
    responses=error_responses(404, 422, 503),
)
async def get_image(image_id: ImageId, session: ReadSessionDep) -> ImageRead:
    return ImageRead.model_validate(await images.get_image(session, image_id))


@router.get(
    "/{image_id}/similar",
    response_model=SimilarImagesResponse,
    summary="Find the stored images most similar to this one",
    responses=error_responses(404, 409, 422, 503),
)
async def find_similar_images(
    image_id: ImageId,
    connection: SearchConnectionDep,
    settings: SettingsDep,
    embedder: EmbedderDep,
    limit: SimilarLimit = None,
    threshold: Threshold = None,
) -> SimilarImagesResponse:
    options = search_options(settings, embedder, limit, threshold)
    matches = await vector_service.find_similar_images(connection, image_id, options)
    return similar_images_response(image_id, matches)


@router.delete(
    "/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an image and its file",
    responses=error_responses(404, 422, 503),
)
async def delete_image(image_id: ImageId, session: SessionDep, store: ImageStoreDep) -> None:
    await images.delete_image(session, image_id, store=store)


@router.post(
    "/search",
    response_model=SimilarImagesResponse,
    summary="Find the stored images most similar to an uploaded image, without storing it",
    responses=error_responses(400, 413, 415, 422, 503),
)
async def search_by_image(
    file: Annotated[UploadFile, File(description="The image to search with; it is not stored")],
    connection: SearchConnectionDep,
    settings: SettingsDep,
    embedder: EmbedderDep,
    image_workers: ImageWorkersDep,
    limit: Annotated[
        int | None, Form(ge=1, le=100, description="Most results (default MAX_SIMILAR_RESULTS)")
    ] = None,
    threshold: Annotated[
        float | None,
        Form(ge=-1.0, le=1.0, allow_inf_nan=False, description="Lowest cosine similarity"),
    ] = None,
) -> SimilarImagesResponse:
    analysed = await images.analyse_upload(
        await file.read(settings.MAX_FILE_SIZE + 1),
        limits=upload_limits(settings),
        embedder=embedder,
        image_workers=image_workers,
    )
    options = search_options(settings, embedder, limit, threshold)
    matches = await vector_service.find_images_like(
        connection, analysed.embedding, analysed.content_hash, options
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
    "content": {media: {} for media in ("image/jpeg", "image/png", "image/gif", "image/bmp")}
}


@router.get(
    "/{image_id}/file",
    response_class=FileResponse,
    summary="The original file, as uploaded",
    responses={
        200: {**_IMAGE_CONTENT, "description": "The bytes as uploaded; ETag is their SHA-256"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **error_responses(404, 422, 503),
    },
)
async def get_image_file(
    image_id: ImageId,
    session: ReadSessionDep,
    store: ImageStoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    image, path = await images.get_stored_file(session, image_id, store=store)
    etag = f'"{image.content_hash}"'
    if not_modified := _not_modified(if_none_match, etag):
        return not_modified
    return FileResponse(
        path,
        media_type=image.content_type,
        filename=image.filename,
        content_disposition_type="inline",
        headers={"ETag": etag, **_FILE_HEADERS},
    )


@router.get(
    "/{image_id}/thumbnail",
    response_class=FileResponse,
    summary="A thumbnail, EXIF orientation applied (cached)",
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/webp": {}},
            "description": "No larger than `size` on its longer side",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **error_responses(404, 422, 503),
    },
)
async def get_thumbnail(
    image_id: ImageId,
    session: ReadSessionDep,
    store: ImageStoreDep,
    image_workers: ImageWorkersDep,
    size: ThumbnailSize = 256,
    format: Annotated[thumbnails.ThumbnailFormat, Query(description="jpeg or webp")] = "jpeg",
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    image, source = await images.get_stored_file(session, image_id, store=store)
    etag = f'"{image.content_hash}-{size}-{format}"'
    if not_modified := _not_modified(if_none_match, etag):
        return not_modified
    async with image_workers:
        thumbnail = await run_in_threadpool(
            thumbnails.cached_thumbnail, store, source, image.content_hash, size, format
        )
    return FileResponse(
        thumbnail,
        media_type=thumbnails.MEDIA_TYPES[format],
        headers={"ETag": etag, **_FILE_HEADERS},
    )


def upload_limits(settings: Settings) -> images.UploadLimits:
    return images.UploadLimits(
        max_file_size=settings.MAX_FILE_SIZE,
        max_pixels=settings.MAX_IMAGE_PIXELS,
        max_frames=settings.MAX_FRAMES,
        allowed_formats=settings.allowed_formats,
    )


def search_options(
    settings: Settings, embedder: Embedder, limit: int | None, threshold: float | None
) -> vector_service.SearchOptions:
    return vector_service.SearchOptions(
        model=embedder.name,
        limit=settings.MAX_SIMILAR_RESULTS if limit is None else limit,
        threshold=settings.SIMILARITY_THRESHOLD if threshold is None else threshold,
        near_duplicate_threshold=settings.NEAR_DUPLICATE_THRESHOLD,
        index=settings.vector_index,
    )


def similar_images_response(
    query_image_id: uuid.UUID | None, matches: list[vector_service.SimilarMatch]
) -> SimilarImagesResponse:
    return SimilarImagesResponse(
        query_image_id=query_image_id,
        similar_images=[SimilarImage.model_validate(match) for match in matches],
        total_results=len(matches),
        search_timestamp=datetime.now(UTC),
    )
