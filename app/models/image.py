"""The `images` table, as defined in init.sql."""

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()
    )
    filename: Mapped[str] = mapped_column(String(255))
    original_filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    file_size: Mapped[int] = mapped_column(Integer)
    file_path: Mapped[str | None] = mapped_column(String(512))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    upload_timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The dimension is enforced by the column type in init.sql; start-up checks it against
    # EMBEDDING_DIMENSION, so the ORM type stays dimension-free.
    embedding_vector: Mapped[Any] = mapped_column(Vector())
    embedding_model: Mapped[str] = mapped_column(String(64))
    # "metadata" is reserved on declarative classes, hence the attribute name.
    image_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    processing_status: Mapped[str] = mapped_column(String(50), default="pending")
