"""The ASGI application: health and Prometheus metrics for now; the fleet API joins it."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.api.health import HealthProbe

__all__ = ["create_app"]


def create_app(health: HealthProbe, registry: CollectorRegistry) -> FastAPI:
    """Build the HTTP application around the running gateway's parts."""
    app = FastAPI(title="tgw gateway", version="1", openapi_url="/v1/openapi.json")

    @app.get("/health", summary="Broker, database and ingest progress")
    async def get_health() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report.as_dict(), status_code=200 if report.healthy else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
