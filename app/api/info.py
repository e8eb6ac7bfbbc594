"""GET /info: what this instance accepts and how it embeds."""

from fastapi import APIRouter

from app.api.deps import ResourcesDep
from app.core.config import SERVICE_NAME, SERVICE_VERSION
from app.imaging.formats import BY_NAME
from app.schemas.health import EmbeddingInfo, ServiceInfo, UploadLimitsInfo

router = APIRouter()


@router.get(
    "/info", response_model=ServiceInfo, summary="Service version, upload limits, embedding"
)
# HEAD too: the original description's troubleshooting guide checks it with `curl -I`.
@router.head("/info", include_in_schema=False)
async def service_info(resources: ResourcesDep) -> ServiceInfo:
    settings, embedder = resources.settings, resources.embedder
    formats = sorted(settings.allowed_formats)
    return ServiceInfo(
        name=SERVICE_NAME,
        version=SERVICE_VERSION,
        upload=UploadLimitsInfo(
            max_file_size=settings.MAX_FILE_SIZE,
            max_image_pixels=settings.MAX_IMAGE_PIXELS,
            max_frames=settings.MAX_FRAMES,
            accepted_formats=formats,
            accepted_content_types=[BY_NAME[name].content_type for name in formats],
            # JPEG's and PNG's too, which are accepted whatever ALLOWED_EXTENSIONS says.
            allowed_extensions=[ext for name in formats for ext in BY_NAME[name].extensions],
        ),
        embedding=EmbeddingInfo(model=embedder.name, dimension=embedder.dimension),
        similarity_threshold=settings.SIMILARITY_THRESHOLD,
        max_similar_results=settings.MAX_SIMILAR_RESULTS,
    )
