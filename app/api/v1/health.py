"""Health endpoints for load balancers, Kubernetes probes and people."""

import asyncio
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Response, status

from app.api.access import requires
from app.api.deps import ResourcesDep
from app.core.config import SERVICE_VERSION
from app.errors import ACCESS_ERRORS, error_responses
from app.schemas.health import (
    DatabaseHealth,
    DetailedHealth,
    EmbeddingStatus,
    HealthStatus,
    LivenessStatus,
    ReadinessStatus,
    StorageHealth,
)
from app.services.health import inspect_database, ping_all, ping_store

router = APIRouter()


# Registered with and without the trailing slash: both answer directly, no redirect.
@router.get(
    "/",
    response_model=HealthStatus,
    summary="Service, database and storage health (200 healthy, 503 unhealthy)",
    responses={
        503: {"model": HealthStatus, "description": "The database or the store is unavailable"}
    },
)
@router.get("", response_model=HealthStatus, include_in_schema=False)
async def health(resources: ResourcesDep, response: Response) -> HealthStatus:
    database_ok, store_ok = await ping_all(resources.engine, resources.store)
    if not (database_ok and store_ok):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthStatus(
        status="healthy" if database_ok and store_ok else "unhealthy",
        database="ok" if database_ok else "unavailable",
        storage="ok" if store_ok else "unavailable",
        version=SERVICE_VERSION,
        timestamp=datetime.now(UTC),
    )


@router.get(
    "/detailed",
    response_model=DetailedHealth,
    summary="Database, pgvector, storage, image count, embedding and uptime",
    dependencies=[requires("admin")],
    responses={
        503: {"model": DetailedHealth, "description": "The database or the store is unavailable"},
        **error_responses(*ACCESS_ERRORS),
    },
)
async def detailed_health(resources: ResourcesDep, response: Response) -> DetailedHealth:
    embedder = resources.embedder
    database, store_ok = await asyncio.gather(
        inspect_database(resources.engine), ping_store(resources.store)
    )
    if not (database.available and store_ok):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return DetailedHealth(
        status="healthy" if database.available and store_ok else "unhealthy",
        version=SERVICE_VERSION,
        uptime_seconds=round(time.monotonic() - resources.started_at, 3),
        timestamp=datetime.now(UTC),
        database=DatabaseHealth(
            status="ok" if database.available else "unavailable",
            mode=resources.database_mode,
            server_version=database.server_version,
            pgvector_version=database.pgvector_version,
            vector_index=database.vector_index,
            error=database.error,
        ),
        storage=StorageHealth(
            status="ok" if store_ok else "unavailable", backend=resources.store.backend
        ),
        image_count=database.image_count,
        embedding=EmbeddingStatus(
            model=embedder.name,
            dimension=embedder.dimension,
            stored_models=database.images_by_model,
            stale_images=None
            if database.images_by_model is None
            else sum(n for m, n in database.images_by_model.items() if m != embedder.name),
        ),
    )


@router.get(
    "/ready",
    response_model=ReadinessStatus,
    summary="Readiness probe: 200 when the database and the image store answer, else 503",
    responses={503: {"model": ReadinessStatus, "description": "Not ready"}},
)
async def readiness(resources: ResourcesDep, response: Response) -> ReadinessStatus:
    database_ok, store_ok = await ping_all(resources.engine, resources.store)
    if not (database_ok and store_ok):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadinessStatus(
        status="ready" if database_ok and store_ok else "not_ready",
        database="ok" if database_ok else "unavailable",
        storage="ok" if store_ok else "unavailable",
    )


@router.get(
    "/live",
    response_model=LivenessStatus,
    summary="Liveness probe: the process answers (never touches the database)",
)
async def liveness() -> LivenessStatus:
    return LivenessStatus()
