"""Bodies of the health and info endpoints."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Availability = Literal["ok", "unavailable"]


class HealthStatus(BaseModel):
    status: Literal["healthy", "unhealthy"]
    database: Availability
    storage: Availability
    version: str
    timestamp: datetime


class LivenessStatus(BaseModel):
    status: Literal["alive"] = "alive"


class ReadinessStatus(BaseModel):
    status: Literal["ready", "not_ready"]
    database: Availability
    storage: Availability


class StorageHealth(BaseModel):
    status: Availability
    backend: Literal["local", "s3"]


class DatabaseHealth(BaseModel):
    status: Literal["ok", "unavailable"]
    mode: Literal["embedded", "external"]
    server_version: str | None = None
    pgvector_version: str | None = None
    vector_index: str | None = Field(
        default=None, description="The similarity index, e.g. `hnsw storage=vector m=16 ...`"
    )
    error: str | None = Field(default=None, description="Why the database is unavailable")


class EmbeddingInfo(BaseModel):
    model: str
    dimension: int


class EmbeddingStatus(EmbeddingInfo):
    stored_models: dict[str, int] | None = Field(
        default=None, description="Stored images per embedding model"
    )
    stale_images: int | None = Field(
        default=None,
        description="Images embedded with another model: not searchable until `reembed` runs",
    )


class DetailedHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    version: str
    uptime_seconds: float
    timestamp: datetime
    database: DatabaseHealth
    storage: StorageHealth
    image_count: int | None
    embedding: EmbeddingStatus


class UploadLimitsInfo(BaseModel):
    max_file_size: int
    max_image_pixels: int
    max_frames: int
    accepted_formats: list[str]
    accepted_content_types: list[str]
    allowed_extensions: list[str]


class ServiceInfo(BaseModel):
    name: str
    version: str
    upload: UploadLimitsInfo
    embedding: EmbeddingInfo
    similarity_threshold: float
    max_similar_results: int
