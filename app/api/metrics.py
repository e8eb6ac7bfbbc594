"""GET /metrics: Prometheus text format."""

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.deps import ReadSessionDep, require_admin
from app.api.errors import error_responses
from app.core.observability import Metrics
from app.services.images import count_images

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require_admin)],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **error_responses(401, 503),
    },
)
async def prometheus_metrics(request: Request, session: ReadSessionDep) -> Response:
    metrics: Metrics = request.app.state.metrics
    metrics.images.set(await count_images(session))
    engine: AsyncEngine | None = getattr(request.app.state, "engine", None)
    if engine is not None:
        pool = engine.sync_engine.pool
        metrics.pool.labels("sessions", "checked_out").set(pool.checkedout())  # type: ignore[attr-defined]
        metrics.pool.labels("sessions", "idle").set(pool.checkedin())  # type: ignore[attr-defined]
        metrics.pool.labels("sessions", "size").set(pool.size())  # type: ignore[attr-defined]
    search_pool: asyncpg.Pool | None = getattr(request.app.state, "search_pool", None)
    if search_pool is not None:
        idle = search_pool.get_idle_size()
        metrics.pool.labels("searches", "checked_out").set(search_pool.get_size() - idle)
        metrics.pool.labels("searches", "idle").set(idle)
        metrics.pool.labels("searches", "size").set(search_pool.get_max_size())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
