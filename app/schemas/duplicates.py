"""Request and response bodies of the duplicate-group endpoints."""

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DuplicateMember(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str
    content_type: str
    file_size: int = Field(ge=0, description="Size in bytes")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    upload_timestamp: datetime
    suggested_keeper: bool = Field(
        description="The copy to keep: the most pixels, then the largest file, then the oldest "
        "upload"
    )


class DuplicateLinkRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_ids: tuple[uuid.UUID, uuid.UUID]
    similarity_score: float = Field(ge=-1.0, le=1.0, description="Cosine similarity")
    match: Literal["exact", "near_duplicate"] = Field(
        description="As `/similar` labels the pair: `exact` the same bytes, `near_duplicate` "
        "verified by its keypoints (with verification off, a score at or above "
        "NEAR_DUPLICATE_THRESHOLD)"
    )
    verification: dict[str, Any] | None = Field(
        default=None,
        description="For a verified near_duplicate: what verification found (as a match's "
        "`evidence` in `/similar`), seen from `query_id`, one of `image_ids`: `rotation` and "
        "`scale` take that image's picture onto the other's",
    )


class DuplicateGroupRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="Stable while the group only grows (see the README)")
    size: int = Field(ge=2, description="Number of members")
    suggested_keeper: uuid.UUID = Field(description="The id of the member to keep")
    members: list[DuplicateMember] = Field(description="The suggested keeper first")
    links: list[DuplicateLinkRead] = Field(
        description="The links that connect the members, best first (not every pair is linked)"
    )
    created_at: datetime
    updated_at: datetime


class DuplicateGroupList(BaseModel):
    items: list[DuplicateGroupRead]
    total: int = Field(ge=0)
    skip: int = Field(ge=0)
    limit: int = Field(ge=1)
    rebuild_needed: bool = Field(
        description="The links were found with other settings (EMBEDDING_MODEL, "
        "NEAR_DUPLICATE_THRESHOLD, VERIFY_NEAR_DUPLICATES, VERIFICATION_CANDIDATES), or a "
        "rebuild is unfinished: run `python -m app duplicates --rebuild`"
    )


MAX_IMAGES_PER_REQUEST = 1000


class ResolveRequest(BaseModel):
    keep: list[uuid.UUID] = Field(
        min_length=1,
        max_length=MAX_IMAGES_PER_REQUEST,
        description="The members to keep; every other member of the group is deleted. Keeping "
        "several records them as kept together, so the group does not come back",
    )


class ResolveResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    group_id: uuid.UUID
    kept: list[uuid.UUID]
    deleted: list[uuid.UUID]


class NotDuplicatesRequest(BaseModel):
    pairs: list[tuple[uuid.UUID, uuid.UUID]] = Field(
        min_length=1,
        max_length=MAX_IMAGES_PER_REQUEST,
        description="Pairs of image ids that are not copies of each other",
    )

    @field_validator("pairs")
    @classmethod
    def _two_images(
        cls, pairs: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        if any(a == b for a, b in pairs):
            raise ValueError("a pair names two different images")
        return pairs


class NotDuplicatesResponse(BaseModel):
    marked: int = Field(ge=1, description="Pairs marked")
    groups: list[DuplicateGroupRead] = Field(description="The groups of these images now")
