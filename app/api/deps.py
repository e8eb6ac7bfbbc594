"""What the routers get injected, as `Annotated` aliases."""

import asyncio
import hmac
import uuid
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.database import (
    SearchConnection,
    Transactions,
    get_read_session,
    get_search_connection,
    get_session,
    get_transactions,
)
from app.core.observability import Metrics
from app.services.embeddings import Embedder
from app.services.errors import NotAuthorized
from app.services.storage import ImageStore


# `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread, which costs
# more than the search itself.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_image_store(request: Request) -> ImageStore:
    store: ImageStore = request.app.state.image_store
    return store


async def get_embedder(request: Request) -> Embedder:
    embedder: Embedder = request.app.state.embedder
    return embedder


async def get_image_workers(request: Request) -> asyncio.Semaphore:
    workers: asyncio.Semaphore = request.app.state.image_workers
    return workers


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def require_admin(request: Request) -> None:
    """With ADMIN_TOKEN set, the request must carry `Authorization: Bearer <token>`."""
    token = request.app.state.settings.ADMIN_TOKEN
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise NotAuthorized()


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
# Released as soon as the endpoint returns, before the response is serialised and sent.
SearchConnectionDep = Annotated[SearchConnection, Depends(get_search_connection, scope="function")]
TransactionsDep = Annotated[Transactions, Depends(get_transactions)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
ImageWorkersDep = Annotated[asyncio.Semaphore, Depends(get_image_workers)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

ImageId = Annotated[uuid.UUID, Path(description="The image's id (a UUID)")]
Skip = Annotated[int, Query(ge=0, le=2_147_483_647, description="Items to skip")]
PageLimit = Annotated[int, Query(ge=1, le=100, description="Items per page")]
SimilarLimit = Annotated[
    int | None,
    Query(ge=1, le=100, description="Most results to return (default MAX_SIMILAR_RESULTS)"),
]
ThumbnailSize = Annotated[
    int, Query(ge=16, le=1024, description="Longest side of the thumbnail, in pixels")
]
Threshold = Annotated[
    float | None,
    Query(
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="Lowest cosine similarity to include (default SIMILARITY_THRESHOLD)",
    ),
]
