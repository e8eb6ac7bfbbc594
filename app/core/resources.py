"""What a running service holds, built once in the lifespan and handed to requests as one typed
object (`ResourcesDep`). The command line builds its store and embedder with the same factories.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings, VectorIndexConfig
from app.core.database import Database, DatabaseMode, database_mode, open_database
from app.core.local_store import LocalImageStore
from app.core.model_cache import efficientnet_lite0_session
from app.core.observability import Metrics
from app.core.storage import ImageStore
from app.imaging.cnn import CnnEmbedder
from app.imaging.embeddings import Embedder
from app.imaging.embeddings import create_embedder as create_pixel_embedder


@dataclass(frozen=True)
class UploadPolicy:
    """What an upload may be (MAX_FILE_SIZE, MAX_IMAGE_PIXELS, MAX_FRAMES, the formats)."""

    max_file_size: int  # bytes
    max_pixels: int
    max_frames: int
    allowed_formats: frozenset[str]  # Pillow format names
    local_features: bool  # computed for verification (VERIFY_NEAR_DUPLICATES)
    regions: bool  # region vectors computed and stored (REGION_VECTORS)

    @classmethod
    def from_settings(cls, settings: Settings) -> "UploadPolicy":
        return cls(
            max_file_size=settings.MAX_FILE_SIZE,
            max_pixels=settings.MAX_IMAGE_PIXELS,
            max_frames=settings.MAX_FRAMES,
            allowed_formats=settings.allowed_formats,
            local_features=settings.VERIFY_NEAR_DUPLICATES and settings.EMBEDDING_MODEL != "hash",
            regions=settings.regions,
        )


@dataclass(frozen=True)
class SearchDefaults:
    """What a search uses when the request does not say (MAX_SIMILAR_RESULTS, thresholds) and
    how it decides near-duplicates (VERIFY_NEAR_DUPLICATES, VERIFICATION_CANDIDATES)."""

    limit: int
    threshold: float  # lowest cosine similarity returned
    near_duplicate_threshold: float
    index: VectorIndexConfig
    verification_candidates: int  # 0: verification off
    regions: bool  # stored images are also found by their region vectors (REGION_VECTORS)
    # The exact scan that ends a lost search gets half of DB_STATEMENT_TIMEOUT, so that it is
    # cut short (and the widest index scan answers) before the request's statement would be.
    exact_scan_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "SearchDefaults":
        return cls(
            limit=settings.MAX_SIMILAR_RESULTS,
            threshold=settings.SIMILARITY_THRESHOLD,
            near_duplicate_threshold=settings.NEAR_DUPLICATE_THRESHOLD,
            index=settings.vector_index,
            # The hash mock proposes random candidates: nothing there to verify.
            verification_candidates=settings.VERIFICATION_CANDIDATES
            if settings.VERIFY_NEAR_DUPLICATES and settings.EMBEDDING_MODEL != "hash"
            else 0,
            regions=settings.regions,
            exact_scan_seconds=settings.DB_STATEMENT_TIMEOUT / 2,
        )


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    database_mode: DatabaseMode
    store: ImageStore
    embedder: Embedder
    # At most IMAGE_WORKERS decodes at once, so CPU work queues up instead of starving the
    # event loop (and the searches it serves).
    decode_slots: asyncio.Semaphore
    metrics: Metrics
    upload_policy: UploadPolicy
    search_defaults: SearchDefaults
    started_at: float  # time.monotonic() at start-up


async def create_store(settings: Settings) -> ImageStore:
    """The STORAGE_BACKEND store, ready to use (the local folders made). Made in the process
    that uses it (the lifespan, a command): the S3 client must not cross a fork."""
    if settings.STORAGE_BACKEND == "s3":
        from app.core.s3_store import S3ImageStore  # only deployments on S3 load the client

        return S3ImageStore(settings)
    local = LocalImageStore(settings.image_dir)
    await run_in_threadpool(local.prepare)
    return local


def create_embedder(settings: Settings) -> Embedder:
    """The EMBEDDING_MODEL embedder (`cnn`: its graph built or read from MODEL_DIR)."""
    return create_named_embedder(
        settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSION, model_dir=settings.model_dir
    )


def create_named_embedder(name: str, dimension: int, *, model_dir: Path) -> Embedder:
    """The embedder called `name` (EMBEDDING_MODELS); the cnn graph cached in `model_dir`."""
    if name == CnnEmbedder.name:
        return CnnEmbedder(dimension, efficientnet_lite0_session(model_dir))
    return create_pixel_embedder(name, dimension)


@asynccontextmanager
async def open_resources(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    database: Database | None = None,
    prepare_index: bool = True,
) -> AsyncIterator[Resources]:
    """Open the database (or use `database`, which the caller keeps open), prepare the store
    and build everything else from `settings`."""
    # The embedder first: a model that cannot be built stops the start before anything runs.
    embedder = create_embedder(settings)
    store = await create_store(settings)
    async with _use_or_open(settings, database, prepare_index) as opened:
        yield Resources(
            settings=settings,
            engine=opened.engine,
            database_mode=database_mode(settings),
            store=store,
            embedder=embedder,
            decode_slots=asyncio.Semaphore(settings.IMAGE_WORKERS),
            metrics=metrics or Metrics(),
            upload_policy=UploadPolicy.from_settings(settings),
            search_defaults=SearchDefaults.from_settings(settings),
            started_at=time.monotonic(),
        )


@asynccontextmanager
async def _use_or_open(
    settings: Settings, database: Database | None, prepare_index: bool
) -> AsyncIterator[Database]:
    if database is not None:
        yield database
        return
    async with open_database(settings, prepare_index=prepare_index) as opened:
        yield opened
