"""Images with chosen vectors (rows only, no files), for the rules of duplicate groups: with
vectors on a circle, which pairs are near-duplicates is a matter of angles."""

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.core.resources import SearchDefaults
from app.models.image import images
from app.services import duplicates
from app.services.search import SearchOptions
from bench.corpus import synthetic_row

MODEL = "perceptual"
# Two vectors at an angle of less than acos(0.7) = 45.6 degrees are near-duplicates.


def options(settings: Settings | None = None) -> SearchOptions:
    """The link search with the default settings (NEAR_DUPLICATE_THRESHOLD 0.7)."""
    defaults = SearchDefaults.from_settings(settings or Settings.model_validate({}))
    return duplicates.link_options(defaults, MODEL)


class Circle:
    """Unit vectors on a circle in a plane of its own (random, so that circles of different
    seeds are unrelated to each other): `at(degrees)`."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((512, 2)))
        self.x, self.y = basis[:, 0], basis[:, 1]

    def at(self, degrees: float) -> NDArray[np.float32]:
        angle = math.radians(degrees)
        vector = math.cos(angle) * self.x + math.sin(angle) * self.y
        return (vector / np.linalg.norm(vector)).astype(np.float32)


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


async def store(
    connection: AsyncConnection,
    vector: NDArray[np.float32],
    *,
    number: int,
    width: int = 100,
    height: int = 100,
    file_size: int = 1000,
    filename: str | None = None,
    local_features: bytes | None = None,
) -> uuid.UUID:
    """Store a row for `vector`; a higher `number` is a later upload."""
    row = synthetic_row(vector, model=MODEL, local_features=local_features)
    row["width"], row["height"], row["file_size"] = width, height, file_size
    row["filename"] = filename or f"image-{number}.jpg"
    row["upload_timestamp"] = _EPOCH + timedelta(minutes=number)
    await connection.execute(insert(images).values(row))
    return row["id"]


async def store_and_link(
    connection: AsyncConnection, circle: Circle, angles: list[float]
) -> list[uuid.UUID]:
    """Store an image at each angle, in order (each a later upload), linking each as the upload
    path does."""
    ids = []
    for number, angle in enumerate(angles):
        image_id = await store(connection, circle.at(angle), number=number)
        await duplicates.link_image(connection, image_id, options(), new=True)
        ids.append(image_id)
    return ids


async def group_sets(connection: AsyncConnection) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Every group: its id and the ids of its members."""
    groups, _ = await duplicates.list_groups(connection, skip=0, limit=100)
    return {group.id: {member.id for member in group.members} for group in groups}
