"""Application factory: lifespan, routers and the one mapping from errors to HTTP responses."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import info, metrics, page
from app.api.v1 import health, images
from app.core.body_limit import BodySizeLimitMiddleware
from app.core.config import SERVICE_NAME, SERVICE_VERSION, Settings, get_settings
from app.core.database import (
    PoolTransactions,
    autocommit,
    create_sessionmaker,
    open_database,
    open_search_pool,
)
from app.core.observability import Metrics, ObservabilityMiddleware, route_templates
from app.services.consistency import check_storage
from app.services.embeddings import Embedder, create_embedder
from app.services.errors import (
    DatabaseUnavailable,
    EmbeddingOutdated,
    EmptyFile,
    FileTooLarge,
    ImageFileMissing,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    NotAuthorized,
    ServiceError,
    StorageFull,
    StorageUnavailable,
    UnsupportedImageFormat,
)
from app.services.images import count_stale_embeddings
from app.services.storage import ImageStore

logger = logging.getLogger("app")

# Room for the multipart envelope around a file of exactly MAX_FILE_SIZE bytes.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = "5"
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    503: {"Retry-After": RETRY_AFTER_SECONDS},
    507: {"Retry-After": RETRY_AFTER_SECONDS},
}

ERROR_STATUS: dict[type[ServiceError], int] = {
    NotAuthorized: 401,
    ImageNotFound: 404,
    ImageFileMissing: 404,
    FileTooLarge: 413,
    UnsupportedImageFormat: 415,
    EmptyFile: 422,
    InvalidImage: 422,
    ImageTooLarge: 422,
    EmbeddingOutdated: 409,
    DatabaseUnavailable: 503,
    StorageFull: 507,
    StorageUnavailable: 503,
}
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    embedder: Embedder = app.state.embedder
    async with (
        open_database(settings) as engine,
        open_search_pool(engine.url, settings) as search_pool,
    ):
        await run_in_threadpool(app.state.image_store.prepare)
        app.state.engine = engine
        app.state.search_pool = search_pool
        app.state.transactions = PoolTransactions(engine)
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.read_sessionmaker = create_sessionmaker(autocommit(engine))
        async with app.state.sessionmaker() as session:
            stale = await count_stale_embeddings(session, model=embedder.name)
            storage = await check_storage(session, store=app.state.image_store, repair=True)
        if not storage.clean:
            logger.warning(
                "storage sweep: removed %d staging leftovers and files without rows; "
                "%d images have no file (see `python -m app check`)",
                storage.removed,
                len(storage.missing_files),
            )
        if stale:
            logger.warning(
                "%d stored images were embedded with another model than EMBEDDING_MODEL=%s; "
                "similar-image search skips them until `python -m app reembed` has run",
                stale,
                embedder.name,
            )
        logger.info(
            "%s %s ready (%s database, %s embeddings)",
            SERVICE_NAME,
            SERVICE_VERSION,
            app.state.database_mode,
            embedder.name,
        )
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Image Similarity Service",
        version=SERVICE_VERSION,
        description="Upload images, read their metadata, and find stored images that look alike.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url="/redoc",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started_at = time.monotonic()
    app.state.database_mode = "external" if settings.external_database_url() else "embedded"
    app.state.image_store = ImageStore(settings.image_dir)
    app.state.embedder = create_embedder(settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSION)
    app.state.image_workers = asyncio.Semaphore(settings.IMAGE_WORKERS)
    app.state.metrics = Metrics()

    app.add_middleware(
        BodySizeLimitMiddleware, max_body_size=settings.MAX_FILE_SIZE + MULTIPART_OVERHEAD_BYTES
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["*"],
    )
    # Outermost, so every response, errors included, is counted, logged and given its id.
    app.add_middleware(
        ObservabilityMiddleware, metrics=app.state.metrics, routes=lambda: route_templates(app)
    )
    app.include_router(images.router, prefix="/api/v1/images", tags=["images"])
    app.include_router(health.router, prefix="/api/v1/health", tags=["health"])
    app.include_router(info.router, tags=["info"])
    app.include_router(metrics.router, tags=["metrics"])
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    _add_error_handlers(app)
    return app


def _error(request: Request, status: int, detail: str, code: str, **extra: object) -> JSONResponse:
    request.state.error_code = code  # for the metrics of refused uploads
    headers = _ERROR_HEADERS.get(status)
    return JSONResponse(
        {"detail": detail, "code": code, **extra}, status_code=status, headers=headers
    )


# Lost or refused connections, a server shutting down or starting up, statements cut short.
_UNAVAILABLE_ERRORS = frozenset(
    {
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
        "TooManyConnectionsError",
        "QueryCanceledError",
        "InterfaceError",
    }
)


def _is_database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (PoolTimeoutError, DisconnectionError, OSError, TimeoutError)):
        return True
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return type(exc).__name__ in _UNAVAILABLE_ERRORS
    if isinstance(exc, DBAPIError):
        return (
            exc.connection_invalidated
            or type(exc.orig).__name__ in _UNAVAILABLE_ERRORS
            or isinstance(exc.orig, (OSError, TimeoutError))
        )
    return False


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 500)
        return _error(request, status, exc.detail, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Inputs are not echoed back: they may be huge or binary.
        errors = [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "Invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return _error(
            request,
            422,
            f"Invalid request: {where}: {first['msg']}",
            "validation_error",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            limit = request.app.state.settings.MAX_FILE_SIZE
            return _error(request, 413, FileTooLarge(limit).detail, FileTooLarge.code)
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        response = _error(request, exc.status_code, str(exc.detail), code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(request, 500, "Internal server error", "internal_error")

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if _is_database_unavailable(exc):
            logger.warning("database unavailable: %s", type(exc).__name__)
            return _error(request, 503, DatabaseUnavailable().detail, DatabaseUnavailable.code)
        return await unexpected_error(request, exc)

    # Registered per class so that an unreachable database is an ordinary 503, not a crash.
    for error_class in (
        DBAPIError,
        PoolTimeoutError,
        DisconnectionError,
        OSError,
        TimeoutError,
        # Raised by asyncpg itself while connecting (e.g. "the database system is starting up").
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ):
        app.add_exception_handler(error_class, database_error)
