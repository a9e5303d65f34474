"""The ASGI application: health, Prometheus metrics and the operator API (token + role)."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.api.auth import Authenticator
from gateway.api.commands import commands_router
from gateway.api.console import install_console
from gateway.api.fleet import fleet_router
from gateway.api.health import HealthProbe
from gateway.api.insights import insights_router
from gateway.api.openapi import install_openapi_conventions
from gateway.api.problems import install_problem_handlers
from gateway.api.ratelimit import CommandRateLimiter
from gateway.commands import CommandService
from gateway.fleet import FleetFeed, FleetStore
from gateway.insights import InsightRefresher, InsightStore

__all__ = ["create_app"]


def create_app(
    health: HealthProbe,
    registry: CollectorRegistry,
    *,
    authenticator: Authenticator | None = None,
    commands: CommandService | None = None,
    fleet: tuple[FleetStore, FleetFeed] | None = None,
    rate_limiter: CommandRateLimiter | None = None,
    insights: tuple[InsightStore, InsightRefresher | None] | None = None,
) -> FastAPI:
    """Build the HTTP application around the running gateway's parts.

    Args:
        health: answers `/health`.
        registry: the process's Prometheus metrics.
        authenticator: checks bearer tokens (required by every `/v1` route that needs a role).
        commands: the command system; its routes are mounted when given.
        fleet: the fleet's store and live feed; the fleet routes and the web console are
            mounted when given.
        rate_limiter: limits new commands per operator and per car (none: unlimited).
        insights: the insight store and refresher; the trips, utilisation, service-list and
            wear routes are mounted when given.
    """
    # No /docs or /redoc: they load their scripts from a CDN, and the gateway runs offline.
    app = FastAPI(
        title="tgw gateway",
        version="1",
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    install_problem_handlers(app)
    install_openapi_conventions(app)
    app.state.authenticator = authenticator
    app.state.command_rate_limiter = rate_limiter
    if commands is not None:
        assert authenticator is not None, "the command routes need an authenticator"
        app.include_router(commands_router(commands))
    if fleet is not None:
        assert authenticator is not None, "the fleet routes need an authenticator"
        app.include_router(fleet_router(*fleet))
        install_console(app)
    if insights is not None:
        assert authenticator is not None, "the insights routes need an authenticator"
        app.include_router(insights_router(*insights))

    @app.get("/health", summary="Broker, database and ingest progress")
    async def get_health() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report.as_dict(), status_code=200 if report.healthy else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
