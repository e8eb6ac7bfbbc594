"""Image endpoints: upload, read, list, similar, delete."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile, status

from app.api.deps import (
    EmbedderDep,
    ImageId,
    ImageStoreDep,
    ImageWorkersDep,
    PageLimit,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    SimilarLimit,
    Skip,
    Threshold,
)
from app.api.errors import error_responses
from app.schemas.image import (
    ImageList,
    ImageRead,
    ImageUploadResponse,
    SimilarImage,
    SimilarImagesResponse,
)
from app.services import images, vector_service

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
    session: SessionDep,
    settings: SettingsDep,
    store: ImageStoreDep,
    embedder: EmbedderDep,
    image_workers: ImageWorkersDep,
) -> ImageUploadResponse:
    # The request body is already capped by the app's body limit; read one byte past the file
    # limit so the service can tell "exactly at the limit" from "over it".
    data = await file.read(settings.MAX_FILE_SIZE + 1)
    result = await images.ingest_image(
        session,
        data=data,
        filename=file.filename,
        limits=images.UploadLimits(
            max_file_size=settings.MAX_FILE_SIZE,
            max_pixels=settings.MAX_IMAGE_PIXELS,
            max_frames=settings.MAX_FRAMES,
            allowed_formats=settings.allowed_formats,
        ),
        store=store,
        embedder=embedder,
        image_workers=image_workers,
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ImageUploadResponse(
        id=result.image.id,
        filename=result.image.filename,
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
async def list_images(session: ReadSessionDep, skip: Skip = 0, limit: PageLimit = 20) -> ImageList:
    items, total = await images.list_images(session, skip=skip, limit=limit)
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
    session: ReadSessionDep,
    settings: SettingsDep,
    embedder: EmbedderDep,
    limit: SimilarLimit = None,
    threshold: Threshold = None,
) -> SimilarImagesResponse:
    matches = await vector_service.find_similar_images(
        session,
        image_id,
        model=embedder.name,
        limit=settings.MAX_SIMILAR_RESULTS if limit is None else limit,
        threshold=settings.SIMILARITY_THRESHOLD if threshold is None else threshold,
        index=settings.vector_index,
    )
    return SimilarImagesResponse(
        query_image_id=image_id,
        similar_images=[SimilarImage.model_validate(match) for match in matches],
        total_results=len(matches),
        search_timestamp=datetime.now(UTC),
    )


@router.delete(
    "/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an image and its file",
    responses=error_responses(404, 422, 503),
)
async def delete_image(image_id: ImageId, session: SessionDep, store: ImageStoreDep) -> None:
    await images.delete_image(session, image_id, store=store)
