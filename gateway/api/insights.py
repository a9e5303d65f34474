"""The insights endpoints of the operator API (docs/insights.md).

GET  /v1/vehicles/{vin}/trips            viewer  a car's trips, newest first
GET  /v1/vehicles/{vin}/trips/{trip_id}  viewer  one trip with its track
GET  /v1/trips                           viewer  every car's trips (in an area), newest first
GET  /v1/insights/utilisation            viewer  rented share, trips per day, idle time; by hour
GET  /v1/insights/service                viewer  cars needing the crew now, the refuelling route
GET  /v1/insights/wear                   viewer  wear and misuse per car or model, per 1,000 km
POST /v1/insights/refresh                admin   derive what arrived since the last refresh now
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query, Response

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
from gateway.insights import (
    AreaError,
    InsightRefresher,
    InsightStore,
    RefreshResult,
    ServiceList,
    ServiceRules,
    Trip,
    TripCursorError,
    TripPage,
    Utilisation,
    UtilisationGrouping,
    UtilisationSort,
    WearGrouping,
    WearReport,
)

__all__ = ["MAX_INSIGHT_RANGE", "insights_router"]

MAX_INSIGHT_RANGE: Final = timedelta(days=92)
MAX_TRIPS_RANGE: Final = timedelta(days=31)
T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="Trips per page.")]
# A page of groups: the console's heat map asks for every cell of a city (about a thousand).
MAX_GROUPS: Final = 10_000
DEFAULT_GROUPS: Final = 500
Cursor = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^[0-9]{1,20}\.[A-Z0-9]{17}$", description="`next_cursor`."),
]
Model = Annotated[
    str | None, Query(pattern=r"^[a-z0-9_]{1,64}$", description="Vehicle profile, e.g. vw_mqb.")
]
_DEFAULT_RULES: Final = ServiceRules()
_LATLON = r"^\s*-?[0-9]{1,2}(\.[0-9]+)?\s*,\s*-?[0-9]{1,3}(\.[0-9]+)?\s*$"


def _window(
    start: datetime | None, end: datetime | None, default: timedelta, longest: timedelta
) -> tuple[datetime, datetime]:
    end = as_utc(end) or datetime.now(UTC)
    start = as_utc(start) or end - default
    try:
        length = end - start
    except OverflowError as exc:  # pragma: no cover - datetimes at the edges of the calendar
        raise Problem(422, "invalid-range", "the range is out of bounds") from exc
    if length <= timedelta(0):
        raise Problem(422, "invalid-range", "`to` must be later than `from`")
    if length > longest:
        raise Problem(
            422, "range-too-long", f"at most {longest.days} days per request: split the range"
        )
    return start, end


async def _db(call: Awaitable[T]) -> T:
    """A store call: bad cursors and database trouble become problem details."""
    return await guarded(call, (TripCursorError,))


def insights_router(store: InsightStore, refresher: InsightRefresher | None) -> APIRouter:
    """The routes, bound to the running gateway's insight store and refresher."""
    router = APIRouter(tags=["insights"])
    _trip_routes(router, store)
    _insight_routes(router, store)
    _refresh_route(router, refresher)
    return router


def _trip_routes(router: APIRouter, store: InsightStore) -> None:
    @router.get(
        "/v1/vehicles/{vin}/trips",
        response_model=TripPage,
        summary="A car's trips, newest first (viewer)",
        responses={404: {"description": "Unknown vehicle"}},
    )
    async def vehicle_trips(
        *,
        vin: VinPath,
        _: Viewer,
        start: From = None,
        end: To = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> TripPage:
        checked = await known_vin(vin, store.vehicle_exists)
        first, last = _window(start, end, timedelta(days=7), MAX_INSIGHT_RANGE)
        return await _db(
            store.trips(vin=checked, start=first, end=last, limit=limit, cursor=cursor)
        )

    @router.get(
        "/v1/vehicles/{vin}/trips/{trip_id}",
        response_model=Trip,
        summary="One trip with its GNSS track (viewer)",
        responses={404: {"description": "Unknown vehicle or trip"}},
    )
    async def vehicle_trip(
        *,
        vin: VinPath,
        trip_id: Annotated[
            int, Path(ge=0, le=10**14, description="The trip's `id` (start, epoch ms).")
        ],
        _: Viewer,
        max_points: Annotated[int, Query(ge=10, le=5000, description="Track points.")] = 1000,
    ) -> Trip:
        checked = await known_vin(vin, store.vehicle_exists)
        trip = await _db(store.trip(checked, trip_id, max_points=max_points))
        if trip is None:
            raise Problem(404, "unknown-trip", f"vehicle {checked} has no trip {trip_id}")
        return trip

    @router.get(
        "/v1/trips",
        response_model=TripPage,
        summary="Every car's trips that started in the range, newest first (viewer)",
    )
    async def fleet_trips(
        *,
        _: Viewer,
        start: From = None,
        end: To = None,
        area: Annotated[
            str | None,
            Query(
                max_length=64,
                pattern=r"^[A-Za-z0-9 _.:-]{1,64}$",
                description="An operating area's name, or a grid cell `y:x`: trips that "
                "started or ended in it.",
            ),
        ] = None,
        model: Model = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> TripPage:
        first, last = _window(start, end, timedelta(days=1), MAX_TRIPS_RANGE)
        try:
            where = store.area(area) if area is not None else None
        except AreaError as exc:
            raise Problem(422, "unknown-area", str(exc)) from exc
        return await _db(
            store.trips(
                vin=None,
                start=first,
                end=last,
                area=where,
                model=model,
                limit=limit,
                cursor=cursor,
            )
        )


def _insight_routes(router: APIRouter, store: InsightStore) -> None:
    @router.get(
        "/v1/insights/utilisation",
        response_model=Utilisation,
        summary="Share of time rented, trips per day, idle time; by hour and weekday (viewer)",
    )
    async def utilisation(
        *,
        _: Viewer,
        start: From = None,
        end: To = None,
        group: Annotated[
            UtilisationGrouping,
            Query(description="car, model, cell (the grid) or area (operating areas)."),
        ] = "model",
        tz: Annotated[
            str,
            Query(
                max_length=64,
                pattern=r"^[A-Za-z0-9_+/-]{1,64}$",
                description="IANA time zone for hour of day and day of week.",
            ),
        ] = "UTC",
        model: Model = None,
        vin: Annotated[str | None, Query(description="Only this car.")] = None,
        sort: Annotated[
            UtilisationSort,
            Query(description="rented: most rented first; idle (group=car): longest idle first."),
        ] = "rented",
        limit: Annotated[
            int, Query(ge=1, le=MAX_GROUPS, description="Groups per page (`groups_total`: all).")
        ] = DEFAULT_GROUPS,
        offset: Annotated[int, Query(ge=0, description="Groups to skip.")] = 0,
    ) -> Response:
        first, last = _window(start, end, timedelta(days=7), MAX_INSIGHT_RANGE)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise Problem(422, "unknown-time-zone", f"{tz!r} is not an IANA time zone") from exc
        if sort == "idle" and group != "car":
            raise Problem(
                422,
                "sort-needs-cars",
                f"sort=idle orders cars by their idle time; use it with group=car (not {group})",
            )
        result = await _db(
            store.utilisation(
                start=first,
                end=last,
                group_by=group,
                tz=tz,
                model=model,
                vin=checked_vin(vin) if vin is not None else None,
                sort=sort,
                limit=limit,
                offset=offset,
            )
        )
        # Serialized once here: FastAPI would dump, validate and serialize the model again,
        # which for a heat map of hundreds of cells costs more than the query.
        return Response(result.model_dump_json(), media_type="application/json")

    @router.get(
        "/v1/insights/service",
        response_model=ServiceList,
        summary="Cars that need the service crew now, and the refuelling route (viewer)",
    )
    async def service(
        *,
        _: Viewer,
        fuel_below: Annotated[
            float, Query(ge=0, le=100, description="Fuel or charge below this %.")
        ] = _DEFAULT_RULES.fuel_below,
        voltage_below: Annotated[
            float, Query(ge=0, le=60, description="12 V battery below this.")
        ] = _DEFAULT_RULES.voltage_below,
        idle_hours: Annotated[
            float, Query(gt=0, le=24 * 365, description="Not rented for longer than this.")
        ] = _DEFAULT_RULES.idle_hours,
        offline_minutes: Annotated[
            float, Query(gt=0, le=60 * 24 * 365, description="Offline for longer than this.")
        ] = _DEFAULT_RULES.offline_minutes,
        start: Annotated[
            str | None,
            Query(
                alias="from",
                max_length=60,
                pattern=_LATLON,
                description="Where the crew sets out: `lat,lon` (default: the stops' centre).",
            ),
        ] = None,
        route: Annotated[
            Literal["all", "fuel", "charge"], Query(description="Which stops the route takes.")
        ] = "all",
        model: Model = None,
    ) -> ServiceList:
        origin = None
        if start is not None:
            lat, lon = (float(part) for part in start.split(","))
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise Problem(422, "invalid-position", "`from` must be `lat,lon` in degrees")
            origin = (lat, lon)
        rules = ServiceRules(
            fuel_below=fuel_below,
            voltage_below=voltage_below,
            idle_hours=idle_hours,
            offline_minutes=offline_minutes,
        )
        return await _db(store.service_list(rules, start=origin, route_energy=route, model=model))

    @router.get(
        "/v1/insights/wear",
        response_model=WearReport,
        summary="Wear and misuse per car or model, per 1,000 km (viewer)",
    )
    async def wear(
        *,
        _: Viewer,
        start: From = None,
        end: To = None,
        group: Annotated[WearGrouping, Query(description="car or model.")] = "model",
    ) -> WearReport:
        first, last = _window(start, end, timedelta(days=30), MAX_INSIGHT_RANGE)
        return await _db(store.wear(first, last, group))


def _refresh_route(router: APIRouter, refresher: InsightRefresher | None) -> None:
    @router.post(
        "/v1/insights/refresh",
        response_model=RefreshResult,
        summary="Derive trips and utilisation from what arrived since the last refresh (admin)",
        responses={
            403: {"description": "Role below admin"},
            503: {"description": "No refresher here"},
        },
    )
    async def refresh(_: Admin) -> RefreshResult:
        if refresher is None:
            raise Problem(503, "insights-disabled", "this gateway runs no insights refresher")
        report = await _db(refresher.refresh())
        return RefreshResult(
            skipped=report.skipped,
            rebuild=report.rebuild,
            cars=report.cars,
            cars_continued=report.cars_continued,
            trips_deleted=report.trips_deleted,
            trips_written=report.trips_written,
            utilisation_rows=report.utilisation_rows,
            duration_s=report.duration_s,
            refreshed_at=report.refreshed_at,
        )
