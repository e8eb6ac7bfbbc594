"""GET /metrics: Prometheus text format."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.pool import QueuePool

from app.api.access import requires
from app.api.deps import ConnectionDep, ResourcesDep
from app.errors import ACCESS_ERRORS, DATABASE_UNAVAILABLE, error_responses
from app.services.images import count_images

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[requires("admin")],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **error_responses(*ACCESS_ERRORS, DATABASE_UNAVAILABLE),
    },
)
async def prometheus_metrics(connection: ConnectionDep, resources: ResourcesDep) -> Response:
    metrics = resources.metrics
    metrics.images.set(await count_images(connection))
    pool = resources.engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        metrics.pool.labels("checked_out").set(pool.checkedout())
        metrics.pool.labels("idle").set(pool.checkedin())
        metrics.pool.labels("size").set(pool.size())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
