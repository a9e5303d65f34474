"""The fleet endpoints of the operator API (docs/api.md).

GET /v1/whoami                        viewer   the caller's token name and role
GET /v1/vehicles                      viewer   cars with their latest state, filtered, paginated
GET /v1/vehicles/{vin}                viewer   one car
GET /v1/vehicles/{vin}/telemetry      viewer   its telemetry over a time range, downsampled
GET /v1/vehicles/{vin}/events         viewer   its events, newest first
GET /v1/events                        viewer   every car's events, newest first
GET /v1/fleet/stream                  viewer   every car's state, live (server-sent events)
GET /v1/dead-letters                  admin    refused messages with their reasons
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, StringConstraints

from gateway.api.params import (
    Admin,
    From,
    To,
    Viewer,
    VinPath,
    as_utc,
    checked_vin,
    guarded,
    known_vin,
)
from gateway.api.problems import Problem
from gateway.auth import Role
from gateway.errors import StorageError
from gateway.fleet import (
    AlertKind,
    DeadLetterPage,
    EventPage,
    FleetFeed,
    FleetStore,
    HistoryRange,
    TelemetryHistory,
    VehicleFilter,
    VehiclePage,
    VehicleState,
)
from gateway.fleet.models import BoundingBox
from gateway.fleet.store import MAX_HISTORY_RANGE, CursorError

__all__ = ["Whoami", "fleet_router"]

HEARTBEAT_S = 15.0
_NUMBER = r"\s*-?[0-9]+(\.[0-9]+)?\s*"
BBOX_PATTERN = rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$"
# Names are snake_case, VINs and cursors plain ASCII: a pattern keeps control characters (NUL
# above all, which PostgreSQL text cannot hold) out before any query runs.
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
DEFAULT_HISTORY = timedelta(hours=1)
T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=400,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page.",
    ),
]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Whoami(BaseModel):
    """Who the presented token belongs to."""

    name: str
    role: Role


def _range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise Problem(422, "invalid-range", "`to` must be later than `from`")


async def _db(call: Awaitable[T]) -> T:
    """A store call: bad cursors and database trouble become problem details."""
    return await guarded(call, (CursorError,))


def fleet_router(store: FleetStore, feed: FleetFeed) -> APIRouter:
    """The routes, bound to the running gateway's store and live feed."""
    router = APIRouter(tags=["fleet"])
    _vehicle_routes(router, store)
    _history_routes(router, store)
    _admin_routes(router, store)
    _stream_route(router, feed)
    return router


def _vehicle_routes(router: APIRouter, store: FleetStore) -> None:
    @router.get("/v1/whoami", response_model=Whoami, summary="The caller's token (viewer)")
    async def whoami(principal: Viewer) -> Whoami:
        return Whoami(name=principal.name, role=principal.role)

    @router.get(
        "/v1/vehicles",
        response_model=VehiclePage,
        summary="Cars with their latest state, filtered, in VIN order (viewer)",
    )
    async def list_vehicles(
        *,
        _: Viewer,
        online: Annotated[bool | None, Query(description="Connected and not stale.")] = None,
        locked: Annotated[bool | None, Query()] = None,
        fuel_below: Annotated[
            float | None,
            Query(ge=0, le=100, description="Fuel (or, for electric cars, charge) below this %."),
        ] = None,
        bbox: Annotated[
            str | None,
            Query(
                max_length=200,
                pattern=BBOX_PATTERN,
                description="Inside min_lon,min_lat,max_lon,max_lat (WGS 84 degrees).",
            ),
        ] = None,
        model: Annotated[
            str | None,
            Query(pattern=r"^[a-z0-9_]{1,64}$", description="Vehicle profile, e.g. bmw_e8x."),
        ] = None,
        q: Annotated[
            str | None,
            Query(pattern=r"^[A-Za-z0-9]{0,17}$", description="Part of the VIN (any case)."),
        ] = None,
        alert: Annotated[AlertKind | None, Query(description="Only cars with this alert.")] = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> VehiclePage:
        try:
            box = BoundingBox.parse(bbox) if bbox is not None else None
        except ValueError as exc:
            raise Problem(422, "invalid-bbox", str(exc)) from exc
        where = VehicleFilter(
            online=online,
            locked=locked,
            fuel_below=fuel_below,
            bbox=box,
            model=model,
            search=q.strip() or None if q else None,
            alert=alert,
        )
        return await _db(store.list_vehicles(where, limit=limit, cursor=cursor))

    @router.get(
        "/v1/vehicles/{vin}",
        response_model=VehicleState,
        summary="One car with its latest state and alerts (viewer)",
        responses={404: {"description": "Unknown vehicle"}},
    )
    async def get_vehicle(vin: VinPath, _: Viewer) -> VehicleState:
        checked = checked_vin(vin)
        state = await _db(store.get_vehicle(checked))
        if state is None:
            raise Problem(404, "unknown-vehicle", f"vehicle {checked} is unknown to this fleet")
        return state


def _history_routes(router: APIRouter, store: FleetStore) -> None:
    @router.get(
        "/v1/vehicles/{vin}/telemetry",
        response_model=TelemetryHistory,
        response_model_by_alias=True,
        summary="A car's telemetry over a time range, downsampled (viewer)",
        responses={404: {"description": "Unknown vehicle"}},
    )
    async def telemetry(
        *,
        vin: VinPath,
        _: Viewer,
        start: From = None,
        end: To = None,
        bucket_s: Annotated[
            int | None,
            Query(ge=1, le=86400, description="Bucket width; default: fits max_points."),
        ] = None,
        max_points: Annotated[int, Query(ge=10, le=5000)] = 1000,
    ) -> TelemetryHistory:
        checked = await known_vin(vin, store.vehicle_exists)
        end = as_utc(end) or datetime.now(UTC)
        start = as_utc(start) or end - DEFAULT_HISTORY
        _range(start, end)
        if end - start > MAX_HISTORY_RANGE:
            raise Problem(
                422,
                "range-too-long",
                f"at most {MAX_HISTORY_RANGE.days} days per request: split the range",
            )
        wanted = HistoryRange(start=start, end=end, bucket_s=bucket_s, max_points=max_points)
        return await _db(store.history(checked, wanted))

    @router.get(
        "/v1/vehicles/{vin}/events",
        response_model=EventPage,
        summary="A car's events, newest first (viewer)",
        responses={404: {"description": "Unknown vehicle"}},
    )
    async def vehicle_events(
        *,
        vin: VinPath,
        _: Viewer,
        start: From = None,
        end: To = None,
        event_type: Annotated[
            list[EventType] | None, Query(alias="type", max_length=20, description="Event types.")
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EventPage:
        checked = await known_vin(vin, store.vehicle_exists)
        start, end = as_utc(start), as_utc(end)
        _range(start, end)
        return await _db(
            store.events(
                vin=checked,
                types=event_type or [],
                start=start,
                end=end,
                limit=limit,
                cursor=cursor,
            )
        )

    @router.get(
        "/v1/events",
        response_model=EventPage,
        summary="Every car's events, newest first (viewer)",
    )
    async def all_events(
        *,
        _: Viewer,
        vin: Annotated[str | None, Query(description="Only this car's events.")] = None,
        start: From = None,
        end: To = None,
        event_type: Annotated[
            list[EventType] | None, Query(alias="type", max_length=20, description="Event types.")
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EventPage:
        start, end = as_utc(start), as_utc(end)
        _range(start, end)
        return await _db(
            store.events(
                vin=checked_vin(vin) if vin is not None else None,
                types=event_type or [],
                start=start,
                end=end,
                limit=limit,
                cursor=cursor,
            )
        )


def _admin_routes(router: APIRouter, store: FleetStore) -> None:
    @router.get(
        "/v1/dead-letters",
        response_model=DeadLetterPage,
        summary="Messages the gateway refused, newest first (admin)",
        responses={403: {"description": "Role below admin"}},
    )
    async def dead_letters(
        *,
        _: Admin,
        reason: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
        vin: Annotated[
            str | None,
            Query(pattern=r"^[!-~]{1,64}$", description="As the topic named it (any text)."),
        ] = None,
        start: From = None,
        end: To = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> DeadLetterPage:
        start, end = as_utc(start), as_utc(end)
        _range(start, end)
        return await _db(
            store.dead_letters(
                reason=reason, vin=vin, start=start, end=end, limit=limit, cursor=cursor
            )
        )


def _stream_route(router: APIRouter, feed: FleetFeed) -> None:
    @router.get(
        "/v1/fleet/stream",
        summary="Every car's state, then its changes, live (server-sent events; viewer)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(_: Viewer) -> StreamingResponse:
        stack = contextlib.AsyncExitStack()
        try:
            subscription = await stack.enter_async_context(feed.subscribe())
        except StorageError as exc:
            await stack.aclose()
            raise Problem(503, "database-unavailable", f"{exc}; try again shortly") from exc

        async def body() -> AsyncIterator[bytes]:
            async with stack:
                yield subscription.snapshot.sse()
                while True:
                    try:
                        update = await subscription.next(HEARTBEAT_S)
                    except StopAsyncIteration:
                        return
                    yield b": keep-alive\n\n" if update is None else update.sse()

        return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)
