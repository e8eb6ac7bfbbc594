"""Duplicate groups: list, read, resolve, and mark pairs as not duplicates. Reading needs the
`read` scope, changing needs `write` (enforced by app/api/access.py when AUTH_REQUIRED is on)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import AwareDatetime

from app.api.access import requires
from app.api.deps import ConnectionDep, PageLimit, ResourcesDep, Skip
from app.errors import (
    ACCESS_ERRORS,
    DATABASE_UNAVAILABLE,
    DUPLICATE_GROUP_NOT_FOUND,
    GROUP_CHANGED,
    IMAGE_NOT_FOUND,
    NOT_A_GROUP_MEMBER,
    VALIDATION_ERROR,
    error_responses,
)
from app.imaging.formats import ContentType
from app.schemas.duplicates import (
    DuplicateGroupList,
    DuplicateGroupRead,
    NotDuplicatesRequest,
    NotDuplicatesResponse,
    ResolveRequest,
    ResolveResponse,
)
from app.services import duplicates
from app.services.images import ImageFilter

router = APIRouter()

GroupId = Annotated[uuid.UUID, Path(description="The group's id (a UUID)")]


def _read(group: duplicates.DuplicateGroup) -> DuplicateGroupRead:
    return DuplicateGroupRead.model_validate(group)


# Registered with and without the trailing slash, as the image listing is.
@router.get(
    "",
    dependencies=[requires("read")],
    response_model=DuplicateGroupList,
    summary="List duplicate groups, largest first",
    responses=error_responses(*ACCESS_ERRORS, VALIDATION_ERROR, DATABASE_UNAVAILABLE),
)
@router.get("/", response_model=DuplicateGroupList, include_in_schema=False)
async def list_duplicate_groups(
    connection: ConnectionDep,
    resources: ResourcesDep,
    skip: Skip = 0,
    limit: PageLimit = 20,
    content_type: Annotated[
        ContentType | None, Query(description="Only groups with a member of this content type")
    ] = None,
    uploaded_after: Annotated[
        AwareDatetime | None,
        Query(description="Only groups with a member uploaded at or after (ISO 8601)"),
    ] = None,
    uploaded_before: Annotated[
        AwareDatetime | None,
        Query(description="Only groups with a member uploaded before (ISO 8601)"),
    ] = None,
) -> DuplicateGroupList:
    options = duplicates.link_options(resources.search_defaults, resources.embedder.name)
    state = await duplicates.groups_state(connection, options)
    groups, total = await duplicates.list_groups(
        connection,
        skip=skip,
        limit=limit,
        where=ImageFilter(content_type, uploaded_after, uploaded_before),
    )
    return DuplicateGroupList(
        items=[_read(group) for group in groups],
        total=total,
        skip=skip,
        limit=limit,
        rebuild_needed=state.rebuild_needed,
    )


@router.get(
    "/{group_id}",
    dependencies=[requires("read")],
    response_model=DuplicateGroupRead,
    summary="Get a duplicate group (its ETag names its members)",
    responses=error_responses(
        *ACCESS_ERRORS, DUPLICATE_GROUP_NOT_FOUND, VALIDATION_ERROR, DATABASE_UNAVAILABLE
    ),
)
async def get_duplicate_group(
    group_id: GroupId, connection: ConnectionDep, response: Response
) -> DuplicateGroupRead:
    group = await duplicates.get_group(connection, group_id)
    response.headers["ETag"] = group.etag
    return _read(group)


@router.post(
    "/not-duplicates",
    dependencies=[requires("write")],
    response_model=NotDuplicatesResponse,
    summary="Mark pairs of images as not duplicates (never linked again)",
    responses=error_responses(
        *ACCESS_ERRORS, IMAGE_NOT_FOUND, VALIDATION_ERROR, DATABASE_UNAVAILABLE
    ),
)
async def mark_not_duplicates(
    body: NotDuplicatesRequest, connection: ConnectionDep
) -> NotDuplicatesResponse:
    groups = await duplicates.mark_not_duplicates(connection, body.pairs)
    return NotDuplicatesResponse(marked=len(body.pairs), groups=[_read(g) for g in groups])


@router.post(
    "/{group_id}/resolve",
    dependencies=[requires("write")],
    response_model=ResolveResponse,
    summary="Resolve a group: keep some members, delete the others",
    responses=error_responses(
        *ACCESS_ERRORS,
        DUPLICATE_GROUP_NOT_FOUND,
        GROUP_CHANGED,
        NOT_A_GROUP_MEMBER,
        VALIDATION_ERROR,
        DATABASE_UNAVAILABLE,
    ),
)
async def resolve_duplicate_group(
    group_id: GroupId,
    body: ResolveRequest,
    connection: ConnectionDep,
    resources: ResourcesDep,
    if_match: Annotated[
        str | None,
        Header(description="The group's ETag as read: refused (412) if its members changed"),
    ] = None,
) -> ResolveResponse:
    resolution = await duplicates.resolve_group(
        connection, group_id, keep=set(body.keep), store=resources.store, if_match=if_match
    )
    return ResolveResponse.model_validate(resolution)
