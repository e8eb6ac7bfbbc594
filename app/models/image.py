"""The `images` table as init.sql defines it: the one column list that inserts, reads, the
benchmark's COPY and the test helpers use; and its region vectors (`image_regions`)."""

import uuid
from datetime import datetime
from typing import Any, TypedDict

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from app.core.vector_index import EmbeddingVector

metadata = MetaData()

images = Table(
    "images",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("filename", String(255), nullable=False),
    Column("original_filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("file_size", Integer, nullable=False),
    Column("file_path", String(512)),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("format", String(16), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("upload_timestamp", DateTime(timezone=True), nullable=False),
    Column("processed_timestamp", DateTime(timezone=True)),
    Column("embedding_vector", EmbeddingVector(), nullable=False),
    Column("embedding_model", String(64), nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("processing_status", String(50), nullable=False),
    Column("local_features", LargeBinary),
)

# The embeddings of parts of each image's picture (REGION_VECTORS), `region` numbering them in
# the order the embedder gives them.
image_regions = Table(
    "image_regions",
    metadata,
    Column(
        "image_id",
        UUID(as_uuid=True),
        ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("region", SmallInteger, primary_key=True),
    Column("embedding_model", String(64), nullable=False),
    Column("embedding_vector", EmbeddingVector(), nullable=False),
)

# Every column but the vector (about 2 KB a row) and the local features (up to 28 KB), for reads
# that return records.
RECORD_COLUMNS = tuple(
    column for column in images.columns if column.name not in {"embedding_vector", "local_features"}
)


class ImageRow(TypedDict):
    """One row of `images`, as inserted (a test checks the keys against the table)."""

    id: uuid.UUID
    filename: str
    original_filename: str
    content_type: str
    file_size: int
    file_path: str | None
    content_hash: str
    format: str
    width: int
    height: int
    upload_timestamp: datetime
    processed_timestamp: datetime | None
    embedding_vector: NDArray[np.float32]
    embedding_model: str
    metadata: dict[str, Any]
    processing_status: str
    local_features: bytes | None
