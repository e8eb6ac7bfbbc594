"""Application factory: lifespan, middleware, routers and the error handlers."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from app.api import info, metrics, page
from app.api.access import AccessMiddleware
from app.api.v1 import duplicates, health, images
from app.core.body_limit import BodySizeLimitMiddleware, allow_long_part_headers
from app.core.config import SERVICE_NAME, SERVICE_VERSION, Settings, get_settings
from app.core.database import (
    UNAVAILABLE_EXCEPTIONS,
    Database,
    is_database_unavailable,
    maintenance_engine,
)
from app.core.observability import (
    UPLOAD_ROUTE,
    Metrics,
    ObservabilityMiddleware,
    route_templates,
)
from app.core.resources import Resources, open_resources
from app.errors import StorageUnavailable, add_error_handlers
from app.services import duplicates as duplicate_groups
from app.services.consistency import sweep
from app.services.images import count_stale_embeddings

logger = logging.getLogger("app")

# Room for the multipart envelope around a file of exactly MAX_FILE_SIZE bytes.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# A part's header line (its filename) may take half of that.
MAX_PART_HEADER_BYTES = MULTIPART_OVERHEAD_BYTES // 2
# The routes that decode an image from the request, and so wait for the decode workers.
DECODING_ROUTES = (("POST", UPLOAD_ROUTE), ("POST", "/api/v1/images/search"))


async def _check_embeddings(resources: Resources) -> None:
    """Start-up checks: warn about embeddings of another model and images without local
    features (with verification on) or region vectors (with REGION_VECTORS on); prepare the
    duplicate groups (first build, splits left undone). Skipped with a warning when the
    database has gone away since the schema was applied.

    They run on a maintenance connection, without DB_STATEMENT_TIMEOUT: each count reads the
    whole table, which takes seconds at a million images on a cold cache, longer than a
    request may."""
    embedder = resources.embedder
    try:
        async with (
            maintenance_engine(resources.engine.url) as maintenance,
            maintenance.connect() as connection,
        ):
            stale = await count_stale_embeddings(connection, model=embedder.name)
            unverifiable = (
                await count_stale_embeddings(connection, model=embedder.name, local_features=True)
                - stale
                if resources.search_defaults.verification_candidates
                else 0
            )
            without_regions = (
                await count_stale_embeddings(connection, model=embedder.name, regions=True) - stale
                if resources.search_defaults.regions
                else 0
            )
            await duplicate_groups.prepare_groups(
                connection,
                duplicate_groups.link_options(resources.search_defaults, embedder.name),
            )
    except UNAVAILABLE_EXCEPTIONS as exc:
        if not is_database_unavailable(exc):
            raise
        logger.warning("start-up checks skipped: database unavailable (%s)", type(exc).__name__)
        return
    if stale:
        logger.warning(
            "%d stored images were embedded with another model than EMBEDDING_MODEL=%s; "
            "similar-image search skips them until `python -m app reembed` has run",
            stale,
            embedder.name,
        )
    if unverifiable:
        logger.warning(
            "%d stored images have no local features for near-duplicate verification (stored "
            "with VERIFY_NEAR_DUPLICATES off, or by an earlier release); their near-duplicates "
            "are labelled by score until `python -m app reembed` has run",
            unverifiable,
        )
    if without_regions:
        logger.warning(
            "%d stored images have no region vectors (stored with REGION_VECTORS off, or by an "
            "earlier release); a search finds them by their whole picture only until "
            "`python -m app reembed` has run",
            without_regions,
        )


async def _sweep_periodically(resources: Resources) -> None:
    """The storage sweep, in the background: at start-up (without delaying readiness: a large
    bucket takes a while to list), then every STORAGE_SWEEP_INTERVAL_SECONDS (0: only once).
    A sweep that fails (database or store unavailable) is logged and tried at the next turn."""
    settings = resources.settings
    while True:
        try:
            await sweep(
                resources.engine,
                store=resources.store,
                grace_seconds=settings.STORAGE_GRACE_SECONDS,
            )
        except StorageUnavailable:
            logger.warning("storage sweep skipped: the store is unavailable")
        except Exception as exc:
            if is_database_unavailable(exc):
                logger.warning("storage sweep skipped: database unavailable")
            else:
                logger.exception("storage sweep failed")
        if not settings.STORAGE_SWEEP_INTERVAL_SECONDS:
            return
        await asyncio.sleep(settings.STORAGE_SWEEP_INTERVAL_SECONDS)


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The service. `database`: an open database to use instead of opening the configured one
    (the caller keeps it open and closes it)."""
    settings = settings or get_settings()
    app_metrics = Metrics(created_series=settings.METRICS_CREATED_SERIES)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
        async with open_resources(settings, metrics=app_metrics, database=database) as resources:
            await _check_embeddings(resources)
            sweeper = asyncio.create_task(_sweep_periodically(resources))
            logger.info(
                "%s %s ready (%s database, %s storage, %s embeddings)",
                SERVICE_NAME,
                SERVICE_VERSION,
                resources.database_mode,
                resources.store.backend,
                resources.embedder.name,
            )
            try:
                yield {"resources": resources}
            finally:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)

    # /docs (Swagger UI) and /redoc with their scripts and styles served by the app itself,
    # not a CDN: they work on a machine without internet.
    app = FastAPIOffline(
        title="Image Similarity Service",
        version=SERVICE_VERSION,
        description="Upload images, read their metadata, and find stored images that look alike.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url="/redoc",
        static_url="/docs/assets",
        favicon_url=page.FAVICON_URL,
        # No "valid" badge fetched from the public Swagger validator.
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=lifespan,
    )
    # Keys, rates and the upload queue, before any body is read (inside CORS, so refusals carry
    # its headers and preflight requests need no key).
    app.add_middleware(
        AccessMiddleware,
        settings=settings,
        metrics=app_metrics,
        openapi=app.openapi,
        decoding_routes=DECODING_ROUTES,
    )
    app.add_middleware(
        BodySizeLimitMiddleware, max_body_size=settings.MAX_FILE_SIZE + MULTIPART_OVERHEAD_BYTES
    )
    allow_long_part_headers(MAX_PART_HEADER_BYTES)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["*"],
    )
    # Outermost, so every response, errors included, is counted, logged and given its id.
    app.add_middleware(
        ObservabilityMiddleware, metrics=app_metrics, routes=lambda: route_templates(app)
    )
    app.include_router(images.router, prefix="/api/v1/images", tags=["images"])
    app.include_router(duplicates.router, prefix="/api/v1/duplicates", tags=["duplicates"])
    app.include_router(health.router, prefix="/api/v1/health", tags=["health"])
    app.include_router(info.router, tags=["info"])
    app.include_router(metrics.router, tags=["metrics"])
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    add_error_handlers(
        app,
        max_file_size=settings.MAX_FILE_SIZE,
        database_errors=UNAVAILABLE_EXCEPTIONS,
        is_database_unavailable=is_database_unavailable,
    )
    return app
