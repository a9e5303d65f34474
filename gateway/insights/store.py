"""The SQL behind the insights API: trips, utilisation, service lists, wear (docs/insights.md).

Reads what the refresher materialised (`trips`, `utilisation_hourly` and its rollups
`utilisation_model_hourly`, `utilisation_cell_daily`, `utilisation_car_daily`) plus the live
tables (`vehicles`, `latest_state`, `events`, `commands`). Works the same in both storage
modes: the stored buckets are plain UTC hours and days.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import StorageError
from gateway.fleet.alerts import (
    DOOR_COLUMNS,
    LOW_LEVEL_PCT,
    LOW_VOLTAGE_V,
    PARKED_SPEED_KMH,
    alert_message,
)
from gateway.insights.grid import CELL_LAT_DEG, CELL_LON_DEG, Cell, point_in_polygon
from gateway.insights.models import (
    HourCell,
    Place,
    ServiceItem,
    ServiceKind,
    ServiceList,
    ServiceReason,
    ServiceRoute,
    TrackPoint,
    Trip,
    TripPage,
    Utilisation,
    UtilisationGroup,
    UtilisationGrouping,
    UtilisationSort,
    WearCounts,
    WearGrouping,
    WearReport,
    WearRow,
)
from gateway.insights.route import plan_route
from gateway.storage import StorageMode

__all__ = [
    "MAX_TRACK_POINTS",
    "WEAR_KINDS",
    "Area",
    "AreaError",
    "InsightStore",
    "ServiceRules",
    "TripCursorError",
]

MAX_TRACK_POINTS: Final = 2000
_TRACK_FETCH_LIMIT: Final = 100_000
WEAR_KINDS: Final = (
    "door_ajar",
    "low_voltage",
    "harsh_braking",
    "harsh_acceleration",
    "signal_out_of_range",
    "command_failed",
)
_CELL_RE: Final = re.compile(r"^(-?\d{1,5}):(-?\d{1,5})$")
_OUTSIDE: Final = "(outside)"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_TRIP_COLUMNS: Final = sql.SQL(
    "t.vin, v.model, t.start_time, t.end_time, t.detected_by, t.start_lat, t.start_lon, "
    "t.end_lat, t.end_lon, t.odometer_km, t.gnss_km, t.distance_km, t.distance_check, "
    "t.fuel_start, t.fuel_end, t.soc_start, t.soc_end, t.max_speed, t.samples, "
    "t.harsh_brakes, t.harsh_accels, t.door_ajar"
)


_MODEL_FILTER: Final = "AND u.model = %(model)s"
# The hours of a range outside its whole UTC days (see _split_days).
_EDGE_HOURS: Final = (
    "(bucket >= %(h1_lo)s AND bucket < %(h1_hi)s) OR (bucket >= %(h2_lo)s AND bucket < %(h2_hi)s)"
)
_WEEK_OF_FLEET: Final = """
    SELECT extract(isodow FROM u.bucket AT TIME ZONE %(tz)s)::int AS day,
           extract(hour FROM u.bucket AT TIME ZONE %(tz)s)::int AS hour,
           sum(u.rented_s) AS rented_s, sum(u.idle_s) AS idle_s, sum(u.trips)::bigint AS trips
    FROM utilisation_model_hourly u
    WHERE u.bucket >= %(first)s AND u.bucket < %(last)s {model}
    GROUP BY 1, 2
"""
_WEEK_OF_CAR: Final = """
    SELECT extract(isodow FROM u.bucket AT TIME ZONE %(tz)s)::int AS day,
           extract(hour FROM u.bucket AT TIME ZONE %(tz)s)::int AS hour,
           sum(u.rented_s) AS rented_s, sum(u.idle_s) AS idle_s, sum(u.trips)::bigint AS trips
    FROM utilisation_hourly u
    WHERE u.vin = %(vin)s AND u.bucket >= %(first)s AND u.bucket < %(last)s
    GROUP BY 1, 2
"""
# When the data in range begins, and the most cars present in any one hour.
_FLEET_EXTENT: Final = """
    SELECT min(bucket) AS earliest, max(cars) AS cars FROM (
        SELECT u.bucket, sum(u.cars) AS cars FROM utilisation_model_hourly u
        WHERE u.bucket >= %(first)s AND u.bucket < %(last)s {model}
        GROUP BY u.bucket
    ) per_hour
"""


def _split_days(first: datetime, last: datetime, now: datetime) -> dict[str, datetime]:
    """[first, last) as whole UTC days [day_lo, day_hi) and the hours at either end.

    A range that runs up to now reads today from the daily rollups too: today's rows hold the
    day so far (there are no hours after now), so only a range that starts inside a day, or ends
    before now inside one, reads hours from the big hourly table.
    """
    day_lo = first.replace(hour=0)
    if day_lo < first:
        day_lo += timedelta(days=1)
    day_hi = last.replace(hour=0)
    if last > now and day_hi < last:
        day_hi += timedelta(days=1)  # today so far
        last = day_hi
    if day_lo >= day_hi:  # no whole day: every hour from the hourly table, once
        return {"day_lo": first, "day_hi": first, "h1_lo": first, "h1_hi": last,
                "h2_lo": last, "h2_hi": last}  # fmt: skip
    return {"day_lo": day_lo, "day_hi": day_hi, "h1_lo": first, "h1_hi": day_lo,
            "h2_lo": day_hi, "h2_hi": max(last, day_hi)}  # fmt: skip


class AreaError(ValueError):
    """An area name that is neither an operating area nor a grid cell."""


class TripCursorError(ValueError):
    """A trips cursor this API did not hand out."""


@dataclass(frozen=True, slots=True)
class Area:
    """Where trips are looked for: an operating area's polygon, or a grid cell's box."""

    name: str
    polygon: tuple[tuple[float, float], ...]  # vertices [lon, lat]

    def sql_polygon(self) -> str:
        return "(" + ",".join(f"({lon},{lat})" for lon, lat in self.polygon) + ")"


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """When a car goes onto the service list.

    Args:
        fuel_below: fuel (or charge, electric cars) below this %.
        voltage_below: 12 V battery below this many volts.
        idle_hours: not rented for longer than this (a relocation candidate).
        offline_minutes: offline (or silent) for longer than this.
    """

    fuel_below: float = LOW_LEVEL_PCT
    voltage_below: float = LOW_VOLTAGE_V
    idle_hours: float = 48.0
    offline_minutes: float = 60.0

    def as_dict(self) -> dict[str, float]:
        return {
            "fuel_below": self.fuel_below,
            "voltage_below": self.voltage_below,
            "idle_hours": self.idle_hours,
            "offline_minutes": self.offline_minutes,
        }


def trip_id(start_time: datetime) -> str:
    """A trip's id in the API: its start as epoch milliseconds."""
    return str(round(start_time.timestamp() * 1000))


def trip_from_row(row: Mapping[str, Any], track: list[TrackPoint] | None = None) -> Trip:
    """The API's view of one `trips` row."""
    start, end = row["start_time"], row["end_time"]

    def used(first: float | None, last: float | None) -> float | None:
        return None if first is None or last is None else round(first - last, 2)

    def place(lat: float | None, lon: float | None) -> Place | None:
        return None if lat is None or lon is None else Place(lat=lat, lon=lon)

    return Trip(
        id=trip_id(start),
        vin=row["vin"],
        model=row.get("model"),
        start_time=start,
        end_time=end,
        in_progress=end is None,
        detected_by=row["detected_by"],
        start=place(row["start_lat"], row["start_lon"]),
        end=place(row["end_lat"], row["end_lon"]),
        duration_s=None if end is None else (end - start).total_seconds(),
        distance_km=round(row["distance_km"] or 0.0, 3),
        odometer_km=None if row["odometer_km"] is None else round(row["odometer_km"], 3),
        gnss_km=round(row["gnss_km"] or 0.0, 3),
        distance_check=row["distance_check"],
        fuel_used_pct=used(row["fuel_start"], row["fuel_end"]),
        charge_used_pct=used(row["soc_start"], row["soc_end"]),
        max_speed=row["max_speed"],
        samples=row["samples"],
        harsh_brakes=row["harsh_brakes"],
        harsh_accels=row["harsh_accels"],
        door_ajar=row["door_ajar"],
        track=track,
    )


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float | None:
    return None if denominator <= 0 else round(numerator / denominator, digits)


class InsightStore:
    """Reads the insights through the gateway's connection pool.

    Args:
        pool: the gateway's pool.
        storage_mode: detected once at start-up.
        operating_areas: polygons per city (settings `commands.operating_areas`, vertices
            [lon, lat]): the `area` of trips and utilisation.

    Raises (every query method):
        StorageError: the database cannot answer.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        storage_mode: StorageMode,
        operating_areas: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    ) -> None:
        self._pool = pool
        self.storage_mode: StorageMode = storage_mode
        self.operating_areas = {
            name: tuple((float(lon), float(lat)) for lon, lat in polygon)
            for name, polygon in (operating_areas or {}).items()
        }

    async def _fetch(
        self, query: sql.Composable | str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[dict[str, Any]]:
        try:
            async with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                # Compiling these short aggregates costs more than running them (1-2 s).
                await cur.execute("SET LOCAL jit = off")
                await cur.execute(query, params)
                rows: list[dict[str, Any]] = await cur.fetchall()
                return rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(f"the database cannot answer the insights query: {exc}") from exc

    def area(self, name: str) -> Area:
        """An operating area by name, or a grid cell `y:x`."""
        if name in self.operating_areas:
            return Area(name, self.operating_areas[name])
        match = _CELL_RE.match(name)
        if match is None:
            known = ", ".join(sorted(self.operating_areas)) or "none configured"
            raise AreaError(
                f"unknown area {name!r}: name an operating area ({known}) or a grid cell 'y:x'"
            )
        cell = Cell(int(match[1]), int(match[2]))
        box = (
            (cell.west, cell.south),
            (cell.east, cell.south),
            (cell.east, cell.north),
            (cell.west, cell.north),
        )
        return Area(cell.key, box)

    # -- trips -------------------------------------------------------------------------------

    async def trips(
        self,
        *,
        vin: str | None,
        start: datetime,
        end: datetime,
        area: Area | None = None,
        model: str | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> TripPage:
        """Trips that started in [start, end), newest first; `area`: started or ended in it."""
        conditions: list[sql.Composable] = [sql.SQL("t.start_time >= %s AND t.start_time < %s")]
        params: list[Any] = [start, end]
        if vin is not None:
            conditions.append(sql.SQL("t.vin = %s"))
            params.append(vin)
        if model is not None:
            conditions.append(sql.SQL("v.model = %s"))
            params.append(model)
        if area is not None:
            conditions.append(
                sql.SQL(
                    "(%s::polygon @> point(t.start_lon, t.start_lat) "
                    "OR %s::polygon @> point(t.end_lon, t.end_lat))"
                )
            )
            params += [area.sql_polygon(), area.sql_polygon()]
        if cursor is not None:
            at, after_vin = _decode_cursor(cursor)
            conditions.append(sql.SQL("(t.start_time, t.vin) < (%s, %s)"))
            params += [at, after_vin]
        rows = await self._fetch(
            sql.SQL(
                "SELECT {} FROM trips t LEFT JOIN vehicles v ON v.vin = t.vin WHERE {} "
                "ORDER BY t.start_time DESC, t.vin DESC LIMIT %s"
            ).format(_TRIP_COLUMNS, sql.SQL(" AND ").join(conditions)),
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            micros = (last["start_time"] - _EPOCH) // timedelta(microseconds=1)
            next_cursor = f"{micros}.{last['vin']}"
        return TripPage(items=[trip_from_row(row) for row in rows], next_cursor=next_cursor)

    async def trip(self, vin: str, started_ms: int, *, max_points: int) -> Trip | None:
        """One trip with its track (telemetry from its start to its end, or to now)."""
        started = datetime.fromtimestamp(started_ms / 1000, UTC)
        rows = await self._fetch(
            sql.SQL(
                "SELECT {} FROM trips t LEFT JOIN vehicles v ON v.vin = t.vin "
                "WHERE t.vin = %s AND t.start_time >= %s AND t.start_time < %s"
            ).format(_TRIP_COLUMNS),
            [vin, started - timedelta(milliseconds=1), started + timedelta(milliseconds=1)],
        )
        if not rows:
            return None
        row = rows[0]
        points = await self._fetch(
            "SELECT time, lat, lon, speed FROM telemetry "
            "WHERE vin = %s AND time >= %s AND time <= coalesce(%s, 'infinity'::timestamptz) "
            "AND lat IS NOT NULL AND lon IS NOT NULL ORDER BY time LIMIT %s",
            [vin, row["start_time"], row["end_time"], _TRACK_FETCH_LIMIT],
        )
        return trip_from_row(row, _downsample([TrackPoint(**p) for p in points], max_points))

    # -- utilisation -------------------------------------------------------------------------

    async def utilisation(
        self,
        *,
        start: datetime,
        end: datetime,
        group_by: UtilisationGrouping,
        tz: str,
        model: str | None = None,
        vin: str | None = None,
        sort: UtilisationSort = "rented",
        limit: int | None = None,
        offset: int = 0,
    ) -> Utilisation:
        """Utilisation over the UTC hours that [start, end) touches, grouped, with the week's
        profile in time zone `tz` (hour of day, day of week).

        Whole UTC days of the range are read from the daily rollups, the hours at its ends
        from `utilisation_hourly`; the profile from the per-model hourly rollup (for one car,
        everything from its own hours). `total` covers every group; `groups` holds the page
        [offset, offset + limit) of them in `sort` order (most rented first, or, per car,
        longest idle first).
        """
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # the stored hours are UTC
        first = start.replace(minute=0, second=0, microsecond=0)
        last = end.replace(minute=0, second=0, microsecond=0)
        if last < end:
            last += timedelta(hours=1)
        state = await self._fetch("SELECT refreshed_at, now() AS now FROM insight_state")
        refreshed_at = state[0]["refreshed_at"] if state else None
        now: datetime = state[0]["now"] if state else datetime.now(UTC)
        params: dict[str, Any] = {"first": first, "last": last, "tz": tz, "model": model}
        params.update(_split_days(first, last, now))
        if vin is not None:
            params["vin"] = vin
            groups = await self._fetch(self._one_car_groups(group_by, params), params)
            week = await self._fetch(_WEEK_OF_CAR, params)
        else:
            groups = await self._fetch(self._fleet_groups(group_by, params), params)
            week = await self._fetch(
                _WEEK_OF_FLEET.format(model=_MODEL_FILTER if model else ""), params
            )
        for row in groups:
            if group_by == "cell":
                y, x = row.pop("cell_y"), row.pop("cell_x")
                row["key"] = "(unknown)" if y is None or x is None else f"{y}:{x}"
        extent = await self._fetch(
            _FLEET_EXTENT.format(model=_MODEL_FILTER if model else ""), params
        )
        earliest = extent[0]["earliest"] if extent else None
        span_start = max(first, earliest) if earliest is not None else first
        span_s = max((min(last, now) - span_start).total_seconds(), 0.0)
        days = span_s / 86400
        if group_by in ("cell", "area") and vin is None:
            for row in groups:  # cars present there on average
                row["cars"] = _ratio(
                    float(row["rented_s"] or 0) + float(row["idle_s"] or 0), span_s, 2
                )
        for row in groups:
            row["key"] = str(row["key"])
            row["rented_s"] = round(float(row["rented_s"] or 0.0), 1)
            row["idle_s"] = round(float(row["idle_s"] or 0.0), 1)
            row["km"] = round(float(row["km"] or 0.0), 3)
        per_car = group_by == "car" or vin is not None
        cars = len(groups) if per_car else int(extent[0]["cars"] or 0) if extent else 0
        total = self._group(
            {
                "key": "all",
                "label": "whole selection",
                "cars": cars,
                "rented_s": sum(row["rented_s"] for row in groups),
                "idle_s": sum(row["idle_s"] for row in groups),
                "trips": sum(int(row["trips"] or 0) for row in groups),
                "km": sum(row["km"] for row in groups),
                "model": None,
            },
            "model",
            days,
        )
        page = await self._page(groups, group_by, now, sort=sort, limit=limit, offset=offset)
        return Utilisation(
            start=first,
            end=last,
            tz=tz,
            group_by=group_by,
            refreshed_at=refreshed_at,
            total=total,
            groups_total=len(groups),
            groups=[self._group(row, group_by, days) for row in page],
            **_profiles(week),
        )

    async def _page(
        self,
        groups: list[dict[str, Any]],
        group_by: UtilisationGrouping,
        now: datetime,
        *,
        sort: UtilisationSort,
        limit: int | None,
        offset: int,
    ) -> list[dict[str, Any]]:
        """The groups of one page in `sort` order; a car's idle time is looked up only for
        the cars of the page (each costs an index probe), unless the order needs all of them."""
        end = None if limit is None else offset + limit
        if group_by == "car" and sort == "idle":
            await self._idle_since(groups, now)

            def longest_idle(row: dict[str, Any]) -> tuple[bool, float, str]:
                since = row.get("idle_since_s")  # None: never seen, listed last
                return (since is None, -(since or 0.0), row["key"])

            groups.sort(key=longest_idle)
            return groups[offset:end]

        def most_rented(row: dict[str, Any]) -> tuple[float, str]:
            share = _ratio(row["rented_s"], row["rented_s"] + row["idle_s"])
            return (-(share or 0.0), row["key"])

        groups.sort(key=most_rented)
        page = groups[offset:end]
        if group_by == "car":
            await self._idle_since(page, now)
        return page

    def _area_join(self, params: dict[str, Any], alias: str = "x") -> str:
        ys, xs, names = self._cell_areas()
        params.update(ys=ys, xs=xs, names=names)
        return (
            "LEFT JOIN unnest(%(ys)s::int[], %(xs)s::int[], %(names)s::text[]) "
            f"AS a (cell_y, cell_x, name) ON a.cell_y = {alias}.cell_y "
            f"AND a.cell_x = {alias}.cell_x"
        )

    def _fleet_groups(self, group_by: UtilisationGrouping, params: dict[str, Any]) -> str:
        model = _MODEL_FILTER.replace("u.model", "x.model") if params["model"] else ""
        if group_by == "model":
            return f"""
                SELECT coalesce(u.model, '(unknown)') AS key, max(u.cars) AS cars,
                       sum(u.rented_s) AS rented_s, sum(u.idle_s) AS idle_s,
                       sum(u.trips)::bigint AS trips, sum(u.km) AS km, min(u.model) AS model
                FROM utilisation_model_hourly u
                WHERE u.bucket >= %(first)s AND u.bucket < %(last)s
                      {_MODEL_FILTER if params["model"] else ""}
                GROUP BY 1
            """  # noqa: S608  # assembled from constants; values are parameters
        if group_by == "car":
            return f"""
                WITH x AS (
                    SELECT vin, rented_s, idle_s, trips, km FROM utilisation_car_daily
                    WHERE day >= %(day_lo)s AND day < %(day_hi)s
                    UNION ALL
                    SELECT vin, rented_s, idle_s, trips, km FROM utilisation_hourly
                    WHERE {_EDGE_HOURS}
                )
                SELECT x.vin AS key, 1 AS cars, sum(x.rented_s) AS rented_s,
                       sum(x.idle_s) AS idle_s, sum(x.trips)::bigint AS trips, sum(x.km) AS km,
                       min(v.model) AS model
                FROM x LEFT JOIN vehicles v ON v.vin = x.vin
                WHERE true {model.replace("x.model", "v.model")}
                GROUP BY x.vin
            """  # noqa: S608  # assembled from constants; values are parameters
        key, group = (
            ("NULL::text AS key, x.cell_y, x.cell_x", "x.cell_y, x.cell_x")
            if group_by == "cell"
            else (f"coalesce(a.name, '{_OUTSIDE}') AS key", "1")
        )
        areas = self._area_join(params) if group_by == "area" else ""
        return f"""
            WITH x AS (
                SELECT model, cell_y, cell_x, rented_s, idle_s, trips, km
                FROM utilisation_cell_daily
                WHERE day >= %(day_lo)s AND day < %(day_hi)s
                UNION ALL
                SELECT v.model, u.cell_y, u.cell_x, u.rented_s, u.idle_s, u.trips, u.km
                FROM utilisation_hourly u LEFT JOIN vehicles v ON v.vin = u.vin
                WHERE {_EDGE_HOURS.replace("bucket", "u.bucket")}
            )
            SELECT {key}, 0 AS cars, sum(x.rented_s) AS rented_s,
                   sum(x.idle_s) AS idle_s, sum(x.trips)::bigint AS trips, sum(x.km) AS km,
                   NULL AS model
            FROM x {areas}
            WHERE true {model}
            GROUP BY {group}
        """  # noqa: S608  # assembled from constants; values are parameters

    def _one_car_groups(self, group_by: UtilisationGrouping, params: dict[str, Any]) -> str:
        key = {
            "car": "u.vin AS key",
            "model": "coalesce(v.model, '(unknown)') AS key",
            "cell": "NULL::text AS key, u.cell_y, u.cell_x",
            "area": f"coalesce(a.name, '{_OUTSIDE}') AS key",
        }[group_by]
        group = "u.cell_y, u.cell_x" if group_by == "cell" else "1"
        areas = self._area_join(params, "u") if group_by == "area" else ""
        model = "AND v.model = %(model)s" if params["model"] else ""
        return f"""
            SELECT {key}, count(DISTINCT u.vin) AS cars, sum(u.rented_s) AS rented_s,
                   sum(u.idle_s) AS idle_s, sum(u.trips)::bigint AS trips, sum(u.km) AS km,
                   min(v.model) AS model
            FROM utilisation_hourly u LEFT JOIN vehicles v ON v.vin = u.vin {areas}
            WHERE u.vin = %(vin)s AND u.bucket >= %(first)s AND u.bucket < %(last)s {model}
            GROUP BY {group}
        """  # noqa: S608  # assembled from constants; values are parameters

    def _cell_areas(self) -> tuple[list[int], list[int], list[str]]:
        """Each grid cell whose centre lies in an operating area, with that area's name."""
        ys: list[int] = []
        xs: list[int] = []
        names: list[str] = []
        seen: set[tuple[int, int]] = set()
        for name in sorted(self.operating_areas):
            polygon = list(self.operating_areas[name])
            lons = [p[0] for p in polygon]
            lats = [p[1] for p in polygon]
            for y in range(int(min(lats) // CELL_LAT_DEG) - 1, int(max(lats) // CELL_LAT_DEG) + 1):
                for x in range(
                    int(min(lons) // CELL_LON_DEG) - 1, int(max(lons) // CELL_LON_DEG) + 1
                ):
                    lat, lon = Cell(y, x).center
                    if (y, x) not in seen and point_in_polygon(lat, lon, polygon):
                        seen.add((y, x))
                        ys.append(y)
                        xs.append(x)
                        names.append(name)
        return ys, xs, names

    @staticmethod
    def _group(
        row: Mapping[str, Any], group_by: UtilisationGrouping, days: float
    ) -> UtilisationGroup:
        rented = float(row["rented_s"] or 0.0)
        idle = float(row["idle_s"] or 0.0)
        trips = int(row["trips"] or 0)
        key = str(row["key"])
        bounds = None
        label = row.get("label") or key
        if group_by == "cell":
            match = _CELL_RE.match(key)
            if match is not None:
                y, x = int(match[1]), int(match[2])
                bounds = [
                    round(y * CELL_LAT_DEG, 6),
                    round(x * CELL_LON_DEG, 6),
                    round((y + 1) * CELL_LAT_DEG, 6),
                    round((x + 1) * CELL_LON_DEG, 6),
                ]
                label = f"cell {key}"
        # Validated, though built from the database's own numbers: pydantic-core validates a
        # model in Rust about three times faster than `model_construct` fills it in Python.
        return UtilisationGroup(
            key=key,
            label=label,
            cars=float(row.get("cars") or 0),
            rented_s=round(rented, 1),
            idle_s=round(idle, 1),
            rented_share=_ratio(rented, rented + idle),
            trips=trips,
            trips_per_day=_ratio(trips, days, 3),
            trips_per_car_day=_ratio(trips * 86400, rented + idle, 3),
            km=round(float(row["km"] or 0.0), 3),
            model=row.get("model") if group_by == "car" else None,
            last_trip_end=row.get("last_trip_end"),
            idle_since_s=row.get("idle_since_s"),
            bounds=bounds,
        )

    async def _idle_since(self, groups: list[dict[str, Any]], now: datetime) -> None:
        """Add each car's last trip end and idle time to its group row."""
        if not groups:
            return
        rows = await self._fetch(
            """
            SELECT c.vin, lt.start_time, lt.end_time, iv.first_seen
            FROM unnest(%s::text[]) AS c (vin)
            LEFT JOIN insight_vehicles iv ON iv.vin = c.vin
            LEFT JOIN LATERAL (
                SELECT start_time, end_time FROM trips t WHERE t.vin = c.vin
                ORDER BY start_time DESC LIMIT 1
            ) lt ON true
            """,
            [[g["key"] for g in groups]],
        )
        last = {row["vin"]: row for row in rows}
        for group in groups:
            row = last.get(group["key"])
            if row is None:
                continue
            if row["start_time"] is not None and row["end_time"] is None:
                since: float | None = 0.0  # rented right now
            else:
                ended = row["end_time"] or row["first_seen"]
                since = None if ended is None else max((now - ended).total_seconds(), 0.0)
            group["last_trip_end"] = row["end_time"]
            group["idle_since_s"] = since

    # -- service list ------------------------------------------------------------------------

    async def service_list(
        self,
        rules: ServiceRules,
        *,
        start: tuple[float, float] | None,
        route_energy: str = "all",
        model: str | None = None,
    ) -> ServiceList:
        """Cars needing the crew now, each with its reasons; the low ones as a route."""
        doors = " OR ".join(f"coalesce(ls.{door}, false)" for door in DOOR_COLUMNS)
        model_filter = "AND v.model = %(model)s" if model is not None else ""
        rows = await self._fetch(
            f"""
            SELECT v.vin, v.model, v.online, v.stale, v.last_seen_at, v.online_changed_at,
                   ls.lat, ls.lon, ls.speed, ls.fuel, ls.soc, ls.batt_v, ls.ignition,
                   {", ".join(f"ls.{door}" for door in DOOR_COLUMNS)},
                   lt.start_time AS last_start, lt.end_time AS last_end, iv.first_seen,
                   now() AS now
            FROM vehicles v
            LEFT JOIN latest_state ls ON ls.vin = v.vin
            LEFT JOIN insight_vehicles iv ON iv.vin = v.vin
            LEFT JOIN LATERAL (
                SELECT start_time, end_time FROM trips t WHERE t.vin = v.vin
                ORDER BY start_time DESC LIMIT 1
            ) lt ON true
            WHERE (ls.fuel < %(fuel)s OR ls.soc < %(fuel)s OR ls.batt_v < %(volts)s
               OR ((NOT v.online OR v.stale)
                   AND coalesce(v.last_seen_at, v.online_changed_at, v.registered_at)
                       < now() - %(offline)s)
               OR (NOT coalesce(ls.ignition, false) AND coalesce(ls.speed, 0) < {PARKED_SPEED_KMH}
                   AND ({doors}))
               OR (lt.end_time < now() - %(idle)s)
               OR (lt.start_time IS NULL AND iv.first_seen < now() - %(idle)s))
               {model_filter}
            ORDER BY v.vin
            """,  # noqa: S608  # assembled from constants; values are parameters
            {
                "fuel": rules.fuel_below,
                "volts": rules.voltage_below,
                "offline": timedelta(minutes=rules.offline_minutes),
                "idle": timedelta(hours=rules.idle_hours),
                "model": model,
            },
        )
        now = rows[0]["now"] if rows else datetime.now(UTC)
        items = [item for row in rows if (item := _service_item(row, rules, now)).reasons]
        wanted = {"fuel": {"low_fuel"}, "charge": {"low_charge"}}.get(
            route_energy, {"low_fuel", "low_charge"}
        )
        stops = [
            item
            for item in items
            if item.lat is not None
            and item.lon is not None
            and any(reason.kind in wanted for reason in item.reasons)
        ]
        route = None
        if stops:
            points = [
                (item.lat, item.lon)
                for item in stops
                if item.lat is not None and item.lon is not None
            ]
            origin = start or (
                sum(p[0] for p in points) / len(points),
                sum(p[1] for p in points) / len(points),
            )
            planned = plan_route(origin, points)
            ordered = []
            for position, stop in enumerate(planned, start=1):
                ordered.append(
                    stops[stop.index].model_copy(
                        update={
                            "stop": position,
                            "leg_km": stop.leg_km,
                            "cumulative_km": stop.cumulative_km,
                        }
                    )
                )
            in_route = {item.vin for item in ordered}
            rest = [item for item in items if item.vin not in in_route]
            route = ServiceRoute(
                start=Place(lat=origin[0], lon=origin[1]),
                stops=[item.vin for item in ordered],
                total_km=planned[-1].cumulative_km,
            )
        else:
            ordered, rest = [], items
        rest.sort(
            key=lambda item: (-len(item.reasons), _KIND_ORDER[item.reasons[0].kind], item.vin)
        )
        return ServiceList(
            generated_at=now,
            thresholds=rules.as_dict(),
            items=[*ordered, *rest],
            route=route,
        )

    # -- wear --------------------------------------------------------------------------------

    async def wear_per_car(self, start: datetime, end: datetime) -> list[WearRow]:
        """Wear and misuse counts of every car with trips, events or failed commands in range."""
        rows = await self._fetch(
            """
            WITH tr AS (
                SELECT vin, count(*) AS trips, sum(distance_km) AS km,
                       sum(harsh_brakes) AS harsh_braking, sum(harsh_accels) AS harsh_acceleration,
                       sum(door_ajar) AS door_ajar
                FROM trips WHERE start_time >= %(start)s AND start_time < %(end)s
                GROUP BY vin
            ), ev AS (
                SELECT vin,
                       count(*) FILTER (WHERE type = 'low_voltage') AS low_voltage,
                       count(*) FILTER (WHERE type = 'signal_out_of_range') AS signal_out_of_range
                FROM events
                WHERE time >= %(start)s AND time < %(end)s
                  AND type IN ('low_voltage', 'signal_out_of_range')
                GROUP BY vin
            ), cm AS (
                SELECT vin, count(*) AS command_failed FROM commands
                WHERE status = 'failed' AND created_at >= %(start)s AND created_at < %(end)s
                GROUP BY vin
            ), cars AS (
                SELECT vin FROM tr UNION SELECT vin FROM ev UNION SELECT vin FROM cm
            )
            SELECT c.vin, v.model, coalesce(tr.trips, 0) AS trips, coalesce(tr.km, 0) AS km,
                   coalesce(tr.door_ajar, 0) AS door_ajar,
                   coalesce(ev.low_voltage, 0) AS low_voltage,
                   coalesce(tr.harsh_braking, 0) AS harsh_braking,
                   coalesce(tr.harsh_acceleration, 0) AS harsh_acceleration,
                   coalesce(ev.signal_out_of_range, 0) AS signal_out_of_range,
                   coalesce(cm.command_failed, 0) AS command_failed
            FROM cars c
            LEFT JOIN tr ON tr.vin = c.vin
            LEFT JOIN ev ON ev.vin = c.vin
            LEFT JOIN cm ON cm.vin = c.vin
            LEFT JOIN vehicles v ON v.vin = c.vin
            ORDER BY v.model NULLS LAST, c.vin
            """,
            {"start": start, "end": end},
        )
        return [
            wear_row(
                row["vin"],
                row["model"],
                cars=1,
                trips=int(row["trips"]),
                km=float(row["km"]),
                counts=WearCounts(**{kind: int(row[kind]) for kind in WEAR_KINDS}),
            )
            for row in rows
        ]

    async def wear(self, start: datetime, end: datetime, group_by: WearGrouping) -> WearReport:
        """Wear per car or per model over [start, end), with the fleet's total."""
        cars = await self.wear_per_car(start, end)
        rows = cars if group_by == "car" else combine_wear(cars, by_model=True)
        fleet = combine_wear(cars, by_model=False)
        return WearReport(
            start=start,
            end=end,
            group_by=group_by,
            rows=rows,
            fleet=fleet[0]
            if fleet
            else wear_row("fleet", None, cars=0, trips=0, km=0.0, counts=WearCounts()),
        )

    async def vehicle_exists(self, vin: str) -> bool:
        return bool(await self._fetch("SELECT 1 AS x FROM vehicles WHERE vin = %s", [vin]))

    async def database_now(self) -> datetime:
        rows = await self._fetch("SELECT now() AS now")
        now: datetime = rows[0]["now"]
        return now


def wear_row(
    key: str, model: str | None, *, cars: int, trips: int, km: float, counts: WearCounts
) -> WearRow:
    """A wear row with its rates per 1,000 km (None when no distance was driven)."""
    values = counts.model_dump()
    return WearRow(
        key=key,
        model=model,
        cars=cars,
        trips=trips,
        km=round(km, 3),
        counts=counts,
        per_1000_km={kind: _ratio(values[kind] * 1000, km, 3) for kind in WEAR_KINDS},
    )


def combine_wear(rows: Sequence[WearRow], *, by_model: bool) -> list[WearRow]:
    """Per-car rows summed per model (or into one fleet row)."""
    groups: dict[str, list[WearRow]] = {}
    for row in rows:
        key = (row.model or "(unknown)") if by_model else "fleet"
        groups.setdefault(key, []).append(row)
    combined = []
    for key in sorted(groups):
        members = groups[key]
        totals = {kind: sum(getattr(m.counts, kind) for m in members) for kind in WEAR_KINDS}
        combined.append(
            wear_row(
                key,
                key if by_model else None,
                cars=len(members),
                trips=sum(m.trips for m in members),
                km=sum(m.km for m in members),
                counts=WearCounts(**totals),
            )
        )
    return combined


_KIND_ORDER: Final[dict[ServiceKind, int]] = {
    "low_fuel": 0,
    "low_charge": 1,
    "low_battery": 2,
    "door_open_parked": 3,
    "offline": 4,
    "not_rented": 5,
}


def _service_item(row: Mapping[str, Any], rules: ServiceRules, now: datetime) -> ServiceItem:
    reasons: list[ServiceReason] = []
    fuel, soc, volts = row["fuel"], row["soc"], row["batt_v"]
    if fuel is not None and fuel < rules.fuel_below:
        reasons.append(
            ServiceReason(
                kind="low_fuel", message=f"fuel at {fuel:.0f} % (below {rules.fuel_below:g} %)"
            )
        )
    if soc is not None and soc < rules.fuel_below:
        reasons.append(
            ServiceReason(
                kind="low_charge", message=f"charge at {soc:.0f} % (below {rules.fuel_below:g} %)"
            )
        )
    if volts is not None and volts < rules.voltage_below:
        reasons.append(
            ServiceReason(
                kind="low_battery",
                message=f"12 V battery at {volts:.1f} V (below {rules.voltage_below:g} V)",
            )
        )
    parked = not row["ignition"] and (row["speed"] is None or row["speed"] < PARKED_SPEED_KMH)
    if parked and any(row[door] for door in DOOR_COLUMNS):
        reasons.append(
            ServiceReason(kind="door_open_parked", message=alert_message("door_open_parked", row))
        )
    offline_s = None
    if not row["online"] or row["stale"]:
        since = row["last_seen_at"] or row["online_changed_at"]
        if since is not None:
            offline_s = max((now - since).total_seconds(), 0.0)
        if offline_s is None or offline_s > rules.offline_minutes * 60:
            text = "never seen" if offline_s is None else f"offline for {_duration(offline_s)}"
            reasons.append(ServiceReason(kind="offline", message=text))
    idle_s = None
    if row["last_start"] is not None and row["last_end"] is None:
        idle_s = 0.0
    elif row["last_end"] is not None or row["first_seen"] is not None:
        idle_s = max((now - (row["last_end"] or row["first_seen"])).total_seconds(), 0.0)
    if idle_s is not None and idle_s > rules.idle_hours * 3600:
        never = row["last_end"] is None
        text = (
            f"never rented in {_duration(idle_s)}"
            if never
            else f"not rented for {_duration(idle_s)}"
        )
        reasons.append(ServiceReason(kind="not_rented", message=f"{text}: relocate?"))
    return ServiceItem(
        vin=row["vin"],
        model=row["model"],
        lat=row["lat"],
        lon=row["lon"],
        fuel=fuel,
        soc=soc,
        batt_v=volts,
        last_seen_at=row["last_seen_at"],
        idle_s=None if idle_s is None else round(idle_s),
        offline_s=None if offline_s is None else round(offline_s),
        reasons=reasons,
    )


def _duration(seconds: float) -> str:
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.1f} days"


def _profiles(week: list[dict[str, Any]]) -> dict[str, list[HourCell]]:
    cells: dict[tuple[int, int], tuple[float, float, int]] = {}
    for row in week:
        cells[(int(row["day"]), int(row["hour"]))] = (
            float(row["rented_s"] or 0.0),
            float(row["idle_s"] or 0.0),
            int(row["trips"] or 0),
        )

    def cell(day: int, hour: int, keys: list[tuple[int, int]]) -> HourCell:
        rented = sum(cells.get(k, (0.0, 0.0, 0))[0] for k in keys)
        idle = sum(cells.get(k, (0.0, 0.0, 0))[1] for k in keys)
        trips = sum(cells.get(k, (0.0, 0.0, 0))[2] for k in keys)
        return HourCell(day=day, hour=hour, rented_share=_ratio(rented, rented + idle), trips=trips)

    days = range(1, 8)
    hours = range(24)
    return {
        "by_hour": [cell(0, h, [(d, h) for d in days]) for h in hours],
        "by_weekday": [cell(d, -1, [(d, h) for h in hours]) for d in days],
        "week": [cell(d, h, [(d, h)]) for d in days for h in hours],
    }


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, _, vin = cursor.partition(".")
    try:
        at = _EPOCH + timedelta(microseconds=int(micros))
    except (ValueError, OverflowError) as exc:
        raise TripCursorError("the cursor is not one this API handed out") from exc
    if not vin:
        raise TripCursorError("the cursor is not one this API handed out")
    return at, vin


def _downsample(points: list[TrackPoint], max_points: int) -> list[TrackPoint]:
    if len(points) <= max_points:
        return points
    step = (len(points) - 1) / (max_points - 1)
    return [points[round(i * step)] for i in range(max_points)]
