"""GET /metrics: Prometheus text format."""

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
        metrics.pool.labels("checked_out").set(pool.checkedout())  # type: ignore[attr-defined]
        metrics.pool.labels("idle").set(pool.checkedin())  # type: ignore[attr-defined]
        metrics.pool.labels("size").set(pool.size())  # type: ignore[attr-defined]
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
