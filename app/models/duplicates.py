"""The duplicate-group tables as init.sql defines them (tests check the columns against the
database): builds, scans, links, groups, members and decisions."""

from sqlalchemy import Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Table
from sqlalchemy.dialects.postgresql import JSONB, UUID

from app.models.image import metadata

duplicate_builds = Table(
    "duplicate_builds",
    metadata,
    Column("build", Integer, primary_key=True),
    Column("embedding_model", String(64), nullable=False),
    Column("near_duplicate_threshold", Float, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("verification_candidates", Integer),
)

duplicate_scans = Table(
    "duplicate_scans",
    metadata,
    Column("image_id", UUID(as_uuid=True), ForeignKey("images.id"), primary_key=True),
    Column("build", Integer, nullable=False),
)

duplicate_links = Table(
    "duplicate_links",
    metadata,
    Column("image_a", UUID(as_uuid=True), ForeignKey("images.id"), primary_key=True),
    Column("image_b", UUID(as_uuid=True), ForeignKey("images.id"), primary_key=True),
    Column("similarity_score", Float, nullable=False),
    Column("match", String(16), nullable=False),
    Column("verification", JSONB),
    Column("build", Integer, nullable=False),
)

duplicate_groups = Table(
    "duplicate_groups",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("needs_check", Boolean, nullable=False),
)

duplicate_members = Table(
    "duplicate_members",
    metadata,
    Column("image_id", UUID(as_uuid=True), ForeignKey("images.id"), primary_key=True),
    Column("group_id", UUID(as_uuid=True), ForeignKey("duplicate_groups.id"), nullable=False),
)

duplicate_decisions = Table(
    "duplicate_decisions",
    metadata,
    Column("hash_a", String(64), primary_key=True),
    Column("hash_b", String(64), primary_key=True),
    Column("decision", String(16), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)
