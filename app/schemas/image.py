"""Request and response bodies of the image endpoints."""

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageUploadResponse(BaseModel):
    id: uuid.UUID
    filename: str
    message: str = Field(examples=["Image uploaded and processed successfully"])
    processing_status: Literal["completed"] = "completed"


class ImageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str = Field(description="The client's filename, reduced to a safe display name")
    original_filename: str = Field(description="The filename as sent, without control characters")
    content_type: str = Field(examples=["image/jpeg"])
    file_size: int = Field(ge=0, description="Size in bytes")
    width: int = Field(gt=0, description="Width as displayed (EXIF orientation applied)")
    height: int = Field(gt=0, description="Height as displayed (EXIF orientation applied)")
    format: str = Field(examples=["JPEG"])
    upload_timestamp: datetime
    processed_timestamp: datetime | None
    processing_status: str = Field(examples=["completed"])
    metadata: dict[str, Any] = Field(
        description="Mode, transparency, frames, a safe EXIF subset and the embedding model",
    )


class ImageList(BaseModel):
    items: list[ImageRead]
    total: int = Field(ge=0)
    skip: int = Field(ge=0)
    limit: int = Field(ge=1)


class MatchEvidence(BaseModel):
    """Why a match is labelled near_duplicate: what near-duplicate verification found."""

    model_config = ConfigDict(from_attributes=True)

    transform: Literal["similarity", "appearance"] = Field(
        description="`similarity`: the keypoints of both pictures agree under one rotation, "
        "scale and shift; `appearance`: two pictures without texture (flat colours, smooth "
        "gradients) whose thumbnails agree"
    )
    mirrored: bool = Field(description="The match is the query's mirror image, edited")
    matches: int = Field(ge=0, description="Keypoint matches (mutual best descriptors)")
    inliers: int = Field(ge=0, description="Matches the transform carries onto each other")
    rotation: float = Field(description="Degrees, counter-clockwise, from query to match")
    scale: float = Field(gt=0, description="Size of the match's content / the query's")


class SimilarImage(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str
    content_type: str
    similarity_score: float = Field(
        ge=-1.0,
        le=1.0,
        description="Cosine similarity of the query's vector with this image's: the best of its "
        "global vector and (REGION_VECTORS, the default) its region vectors, the embeddings of "
        "its four quadrants and its centre; the threshold applies to it",
    )
    upload_timestamp: datetime
    match: Literal["exact", "near_duplicate", "similar"] = Field(
        description="`exact`: the same bytes; `near_duplicate`: the same picture, edited "
        "(verified by its keypoints; with verification off, a score at or above "
        "NEAR_DUPLICATE_THRESHOLD); `similar`: looks alike, above the threshold"
    )
    evidence: MatchEvidence | None = Field(
        default=None, description="For a verified near_duplicate: what verification found"
    )


class SimilarImagesResponse(BaseModel):
    query_image_id: uuid.UUID | None = Field(
        description="The stored query image; null for a search by an uploaded image"
    )
    similar_images: list[SimilarImage]
    total_results: int = Field(ge=0)
    search_timestamp: datetime
