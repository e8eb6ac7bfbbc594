"""Service configuration: one `Settings` object read from the environment and `.env`."""

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Literal

from PIL import Image as PILImage
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import URL, make_url

from app.imaging.formats import ALWAYS_ALLOWED, BY_EXTENSION

SERVICE_NAME = "image-similarity-service"
SERVICE_VERSION = "0.1.0"
# Requests' statements take milliseconds (bench/search.py); two seconds is a stalled server.
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class VectorIndexConfig:
    kind: Literal["hnsw", "ivfflat", "none"]
    storage: Literal["vector", "halfvec"]
    dimension: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_insert_ef_construction: int
    hnsw_ef_search: int
    ivfflat_lists: int | None
    ivfflat_probes: int
    build_memory: str


LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Database. DATABASE_URL wins; otherwise an explicitly set POSTGRES_HOST builds the URL from
    # the POSTGRES_* parts; otherwise an embedded PostgreSQL is started under DATA_DIR.
    DATABASE_URL: SecretStr | None = None
    POSTGRES_HOST: str = "localhost"
    POSTGRES_USER: str = "postgres"
    POSTGRES_PASSWORD: SecretStr = SecretStr("password")
    POSTGRES_DB: str = "image_processing"
    POSTGRES_PORT: int = Field(default=5432, ge=1, le=65535)

    # Server
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    DATA_DIR: Path = Path("data")
    STORAGE_DIR: Path | None = None
    # Where the cnn embedder's graph is cached once built (default DATA_DIR/models).
    MODEL_DIR: Path | None = None
    DEBUG: bool = False
    LOG_LEVEL: LogLevel = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    # When set, /api/v1/health/detailed and /metrics require `Authorization: Bearer <token>`
    # (or an admin API key); the token is an admin credential everywhere.
    ADMIN_TOKEN: SecretStr | None = None
    # true: /metrics also has a `*_created` series (start time) for every counter and histogram.
    METRICS_CREATED_SERIES: bool = False
    # Access (README, "Access and limits"): true = every /api/v1/images request needs an API
    # key of the right scope. Keys are read from the database, and remembered this long (a
    # revoked key stops working on every replica within this time; 0 = read on every request).
    AUTH_REQUIRED: bool = False
    API_KEY_CACHE_SECONDS: float = Field(default=5.0, ge=0, le=300)
    CORS_ORIGINS: Annotated[list[str], NoDecode] = [
        "http://localhost:3000",
        "http://localhost:8080",
        "http://localhost:8000",
    ]

    # Uploads
    MAX_FILE_SIZE: int = Field(default=10 * 1024 * 1024, gt=0)
    # At most Pillow's decompression-bomb threshold: every image Pillow would warn about is
    # refused by our own check, from its header, before anything is decoded.
    MAX_IMAGE_PIXELS: int = Field(default=50_000_000, gt=0, le=PILImage.MAX_IMAGE_PIXELS or 2**31)
    MAX_FRAMES: int = Field(default=100, ge=1, le=100_000)
    # Every format the service reads: what cameras and phones (JPEG, HEIC), browsers and web
    # tools (PNG, WebP, AVIF, GIF), scanners (TIFF) and old editors (BMP) write.
    ALLOWED_EXTENSIONS: Annotated[list[str], NoDecode] = list(BY_EXTENSION)

    # Embeddings and search
    EMBEDDING_MODEL: Literal["cnn", "perceptual", "hash"] = "cnn"
    EMBEDDING_DIMENSION: int = Field(default=512, ge=2, le=16000)
    # Calibrated on bench/quality.py for the perceptual model: ~97% of edited copies score at
    # least 0.6, and fewer than 0.5% of unrelated photos do.
    SIMILARITY_THRESHOLD: float = Field(default=0.6, ge=-1.0, le=1.0)
    MAX_SIMILAR_RESULTS: int = Field(default=10, ge=1, le=100)
    # With VERIFY_NEAR_DUPLICATES off (or for an image without local features), matches at or
    # above this are labelled near_duplicate: 93% of the mild edits of bench/quality.py and no
    # unrelated photo reach 0.7 (perceptual); no threshold separates harder edits.
    NEAR_DUPLICATE_THRESHOLD: float = Field(default=0.7, ge=-1.0, le=1.0)
    # Two stages: the vector index proposes candidates, local features (computed at upload)
    # verify the best VERIFICATION_CANDIDATES of them; a verified match is a near_duplicate.
    VERIFY_NEAR_DUPLICATES: bool = True
    VERIFICATION_CANDIDATES: int = Field(default=20, ge=1, le=100)
    # Region vectors: each stored picture is also embedded by its quadrants and centre, and a
    # search compares the query with those too (collages, screenshots); `cnn` and `perceptual`.
    REGION_VECTORS: bool = True

    # Vector index (see README, "Search at scale")
    VECTOR_INDEX: Literal["hnsw", "ivfflat", "none"] = "hnsw"
    VECTOR_STORAGE: Literal["vector", "halfvec"] = "vector"
    HNSW_M: int = Field(default=16, ge=2, le=100)
    # 128, not pgvector's 64: with 64, a 100,000-image graph links a few images only to
    # far-away ones, and scans that reach them stop there (the first scans of 0.4 % of
    # held-out queries found none of their 10 nearest; none with 128). README, "Measured: the
    # tail".
    HNSW_EF_CONSTRUCTION: int = Field(default=128, ge=4, le=1000)
    # The candidate list of each row that joins a built graph (an upload): 256, because at a
    # million images rows inserted at 128 were linked badly enough that some searches by them
    # came back empty (README, "Measured: the tail"). A bulk build keeps HNSW_EF_CONSTRUCTION.
    HNSW_INSERT_EF_CONSTRUCTION: int = Field(default=256, ge=4, le=1000)
    HNSW_EF_SEARCH: int = Field(default=100, ge=1, le=1000)
    IVFFLAT_LISTS: int | None = Field(default=None, ge=1, le=32768)
    IVFFLAT_PROBES: int = Field(default=20, ge=1, le=32768)
    INDEX_BUILD_MEMORY: str = Field(default="1GB", pattern=r"^\d+\s*(kB|MB|GB)$")

    # Image storage (see README, "Running on several machines"). `local`: files under STORAGE_DIR;
    # `s3`: objects in an S3-compatible bucket, shared by every replica.
    STORAGE_BACKEND: Literal["local", "s3"] = "local"
    S3_ENDPOINT_URL: str | None = None  # unset: AWS S3 of S3_REGION
    # Where clients reach the store, for signed URLs (FILE_REDIRECT=signed); unset: the same.
    S3_PUBLIC_ENDPOINT_URL: str | None = None
    S3_BUCKET: str | None = None
    S3_REGION: str = "us-east-1"
    S3_PREFIX: str = Field(default="", pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$")
    # The standard AWS names; unset, the usual AWS credential chain applies (AWS_SESSION_TOKEN,
    # web identity, container and instance credentials).
    AWS_ACCESS_KEY_ID: SecretStr | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None
    # Each request to the store, whole (connect included), and its connect phase alone.
    S3_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=300)
    S3_CONNECT_TIMEOUT_SECONDS: float = Field(default=2.0, gt=0, le=60)
    # Retries of a failed request (5xx, connection errors), within S3_RETRY_TIMEOUT_SECONDS.
    S3_MAX_RETRIES: int = Field(default=2, ge=0, le=10)
    S3_RETRY_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=300)
    # `/file` answers with a redirect to a signed URL of the object instead of its bytes.
    FILE_REDIRECT: Literal["off", "signed"] = "off"
    FILE_REDIRECT_EXPIRY_SECONDS: int = Field(default=300, ge=1, le=604_800)  # SigV4 allows 7 days
    # The sweep (files without rows, leftovers): at start-up, then every this many seconds
    # (0: at start-up only). Objects younger than the grace period are never touched.
    STORAGE_SWEEP_INTERVAL_SECONDS: float = Field(default=3600.0, ge=0)
    STORAGE_GRACE_SECONDS: float = Field(default=600.0, ge=0)

    # Concurrency
    WORKERS: int = Field(default=1, ge=1, le=64)
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=1000)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0, le=1000)
    IMAGE_WORKERS: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, le=256)
    # Longest a request's SQL statement may take, in seconds: then it is cancelled and the
    # request answers 503. Also how long a stalled database keeps a request waiting.
    DB_STATEMENT_TIMEOUT: float = Field(default=DEFAULT_STATEMENT_TIMEOUT_SECONDS, gt=0, le=3600)
    # Uploads and searches by upload that may wait for one of the IMAGE_WORKERS (per process);
    # beyond that they are refused with 503 and Retry-After before their body is read.
    UPLOAD_QUEUE_LIMIT: int = Field(default=16, ge=0, le=100_000)

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ALLOWED_EXTENSIONS", mode="before")
    @classmethod
    def _parse_extensions(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("ALLOWED_EXTENSIONS")
    @classmethod
    def _known_extensions(cls, value: list[str]) -> list[str]:
        normalised = [ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in value]
        unknown = sorted(set(normalised) - BY_EXTENSION.keys())
        if unknown:
            known = ", ".join(BY_EXTENSION)
            raise ValueError(f"unsupported extensions {unknown}; known: {known}")
        return normalised

    @model_validator(mode="after")
    def _storage_complete(self) -> "Settings":
        if self.STORAGE_BACKEND == "s3" and not self.S3_BUCKET:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        if self.FILE_REDIRECT == "signed" and self.STORAGE_BACKEND != "s3":
            raise ValueError("FILE_REDIRECT=signed needs STORAGE_BACKEND=s3")
        return self

    @property
    def allowed_formats(self) -> frozenset[str]:
        """Pillow format names accepted for upload (JPEG and PNG always)."""
        return ALWAYS_ALLOWED | {BY_EXTENSION[ext].name for ext in self.ALLOWED_EXTENSIONS}

    @property
    def data_dir(self) -> Path:
        return self.DATA_DIR.expanduser().resolve()

    @property
    def image_dir(self) -> Path:
        if self.STORAGE_DIR is not None:
            return self.STORAGE_DIR.expanduser().resolve()
        return self.data_dir / "images"

    @property
    def model_dir(self) -> Path:
        if self.MODEL_DIR is not None:
            return self.MODEL_DIR.expanduser().resolve()
        return self.data_dir / "models"

    @property
    def embedded_pgdata_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def regions(self) -> bool:
        """Whether region vectors are stored and searched: REGION_VECTORS, for an embedder that
        sees pixels (the hash mock's regions would be random vectors)."""
        return self.REGION_VECTORS and self.EMBEDDING_MODEL != "hash"

    @cached_property  # read on every search: built once
    def vector_index(self) -> "VectorIndexConfig":
        return VectorIndexConfig(
            kind=self.VECTOR_INDEX,
            storage=self.VECTOR_STORAGE,
            dimension=self.EMBEDDING_DIMENSION,
            hnsw_m=self.HNSW_M,
            hnsw_ef_construction=self.HNSW_EF_CONSTRUCTION,
            hnsw_insert_ef_construction=self.HNSW_INSERT_EF_CONSTRUCTION,
            hnsw_ef_search=self.HNSW_EF_SEARCH,
            ivfflat_lists=self.IVFFLAT_LISTS,
            ivfflat_probes=self.IVFFLAT_PROBES,
            build_memory=self.INDEX_BUILD_MEMORY,
        )

    def external_database_url(self) -> URL | None:
        """The URL of an external PostgreSQL, or None when the embedded one should be used."""
        if self.DATABASE_URL is not None and self.DATABASE_URL.get_secret_value():
            url = make_url(self.DATABASE_URL.get_secret_value())
            # Accept plain postgresql:// URLs too; the service always talks through asyncpg.
            return url.set(drivername="postgresql+asyncpg")
        if "POSTGRES_HOST" in self.model_fields_set:
            return URL.create(
                "postgresql+asyncpg",
                username=self.POSTGRES_USER,
                password=self.POSTGRES_PASSWORD.get_secret_value(),
                host=self.POSTGRES_HOST,
                port=self.POSTGRES_PORT,
                database=self.POSTGRES_DB,
            )
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
