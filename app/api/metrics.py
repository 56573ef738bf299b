"""`GET /metrics`: Prometheus text exposition (no token; `LOOMD_METRICS_ENABLED=false` hides it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.responses import errors
from app.errors import NotFound

router = APIRouter(tags=["health"])


@router.get(
    "/metrics", name="metrics", summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
               **errors(404, s404="Metrics are turned off (`not_found`)")},
)
async def metrics(request: Request) -> Response:
    """Runs by status, active and queued runs, latency histograms, SSE clients, events."""
    if not request.app.state.settings.metrics_enabled:
        raise NotFound("metrics are turned off")
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# Scrapers and uptime checks probe with HEAD; the headers are those of GET, the body is dropped.
router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False,
                     response_class=Response, name="metrics_head")
