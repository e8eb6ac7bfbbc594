"""What the routers get injected, as `Annotated` aliases."""

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.resources import Resources


# `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread, which costs
# more than a search.
async def get_resources(request: Request) -> Resources:
    """The lifespan's resources (lifespan state)."""
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_connection(resources: ResourcesDep) -> AsyncIterator[AsyncConnection]:
    """A connection of the pool in autocommit mode (see app/core/database.py); waits
    DB pool_timeout at most for one, then the request answers 503."""
    async with resources.engine.connect() as connection:
        yield connection


# Released as soon as the endpoint returns, before the response is serialised and sent.
ConnectionDep = Annotated[AsyncConnection, Depends(get_connection, scope="function")]


ImageId = Annotated[uuid.UUID, Path(description="The image's id (a UUID)")]
Skip = Annotated[int, Query(ge=0, le=2_147_483_647, description="Items to skip")]
PageLimit = Annotated[int, Query(ge=1, le=100, description="Items per page")]
SimilarLimit = Annotated[
    int | None,
    Query(ge=1, le=100, description="Most results to return (default MAX_SIMILAR_RESULTS)"),
]
ThumbnailSize = Annotated[
    int, Query(ge=16, le=1024, description="Longest side of the thumbnail, in pixels")
]
Threshold = Annotated[
    float | None,
    Query(
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="Lowest cosine similarity to include (default SIMILARITY_THRESHOLD)",
    ),
]
