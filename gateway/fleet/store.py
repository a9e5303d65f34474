"""The SQL behind the fleet API, for both storage modes (docs/api.md).

Downsampling uses `time_bucket` on TimescaleDB and `date_bin` on plain PostgreSQL; the mode is
detected once at start-up and handed in. Lists are paginated by keyset (an opaque cursor), never
by OFFSET, so a page stays cheap however deep it is and cars appearing meanwhile do not shift it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    AlertKind,
    alert_message,
    alerts_for,
)
from gateway.fleet.models import (
    Alert,
    DeadLetter,
    DeadLetterPage,
    EventPage,
    EventRecord,
    TelemetryHistory,
    TelemetryPoint,
    VehicleFilter,
    VehiclePage,
    VehicleState,
)
from gateway.storage import StorageMode

__all__ = [
    "MAX_HISTORY_RANGE",
    "NICE_BUCKETS_S",
    "CursorError",
    "FleetStore",
    "HistoryRange",
    "choose_bucket_s",
]

MAX_HISTORY_RANGE: Final = timedelta(days=31)
NICE_BUCKETS_S: Final = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip

_STATE_COLUMNS: Final = sql.SQL(
    """
    v.vin, v.model, (v.online AND NOT v.stale) AS online, v.online AS connected, v.stale,
    v.online_changed_at, v.last_seen_at, v.capabilities, v.firmware,
    ls.time, ls.lat, ls.lon, ls.heading, ls.speed, ls.fuel, ls.soc, ls.odometer, ls.batt_v,
    ls.ignition, ls.locked, ls.door_fl_open, ls.door_fr_open, ls.door_rl_open, ls.door_rr_open,
    ls.trunk_open
    """
)
# Cars that sent data register themselves (ingest inserts them into `vehicles`), so `vehicles`
# drives the join and a registered car that never sent a sample is still listed.
_STATE_FROM: Final = sql.SQL("FROM vehicles v LEFT JOIN latest_state ls ON ls.vin = v.vin")

_DOORS_OPEN: Final = sql.SQL(" OR ").join(
    sql.SQL("COALESCE(ls.{}, false)").format(sql.Identifier(door)) for door in DOOR_COLUMNS
)
# The same rules as gateway.fleet.alerts.alerts_for, as SQL (a test checks that they agree).
_ALERT_SQL: Final[dict[AlertKind, sql.Composable]] = {
    "offline": sql.SQL("(NOT v.online OR v.stale)"),
    "door_open_parked": sql.SQL(
        "(NOT COALESCE(ls.ignition, false) AND COALESCE(ls.speed, 0) < {speed} AND ({doors}))"
    ).format(speed=sql.Literal(PARKED_SPEED_KMH), doors=_DOORS_OPEN),
    "low_fuel": sql.SQL("ls.fuel < {}").format(sql.Literal(LOW_LEVEL_PCT)),
    "low_charge": sql.SQL("ls.soc < {}").format(sql.Literal(LOW_LEVEL_PCT)),
    "low_battery": sql.SQL("ls.batt_v < {}").format(sql.Literal(LOW_VOLTAGE_V)),
}

_BUCKET_FUNCTION: Final[dict[StorageMode, str]] = {
    "timescaledb": "time_bucket",
    "postgres": "date_bin",
}


def _last(column: str, *also_not_null: str) -> sql.Composable:
    # The newest non-null value in the bucket; portable (TimescaleDB's last() is not on plain PG).
    not_null = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in (column, *also_not_null)
    )
    return sql.SQL("(array_agg({col} ORDER BY time DESC) FILTER (WHERE {nn}))[1]").format(
        col=sql.Identifier(column), nn=not_null
    )


_HISTORY_AGGREGATES: Final = sql.SQL(", ").join(
    sql.SQL("{} AS {}").format(expression, sql.Identifier(name))
    for name, expression in (
        ("samples", sql.SQL("count(*)")),
        ("lat", _last("lat", "lon")),
        ("lon", _last("lon", "lat")),
        ("speed_avg", sql.SQL("round(avg(speed)::numeric, 2)::float8")),
        ("speed_max", sql.SQL("max(speed)")),
        ("fuel", _last("fuel")),
        ("soc", _last("soc")),
        ("odometer", sql.SQL("max(odometer)")),
        ("batt_v", sql.SQL("min(batt_v)")),
        ("locked", _last("locked")),
        ("ignition", _last("ignition")),
    )
)


class CursorError(ValueError):
    """A pagination cursor that this API did not hand out (or that belongs to another list)."""


def encode_cursor(kind: str, values: Sequence[Any]) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise CursorError("the cursor is not one this API handed out") from exc
    if not isinstance(data, list) or len(data) != arity + 1 or data[0] != kind:
        raise CursorError("the cursor belongs to another list or is damaged")
    return data[1:]


def choose_bucket_s(range_s: float, max_points: int) -> int:
    """The smallest round bucket width that keeps `range_s` within `max_points` buckets."""
    wanted = max(range_s / max_points, 1.0)
    for width in NICE_BUCKETS_S:
        if width >= wanted:
            return width
    return math.ceil(wanted / 86400) * 86400


@dataclass(frozen=True, slots=True)
class HistoryRange:
    """A telemetry history request: [start, end), with a bucket width or a point budget."""

    start: datetime
    end: datetime
    bucket_s: int | None = None
    max_points: int = 1000


def vehicle_state(row: dict[str, Any]) -> VehicleState:
    """The API's view of one `vehicles` + `latest_state` row (alerts included)."""
    kinds = alerts_for(row)
    return VehicleState(
        **{key: value for key, value in row.items() if key != "capabilities"},
        capabilities=list(row["capabilities"] or []),
        alerts=[Alert(kind=kind, message=alert_message(kind, row)) for kind in kinds],
    )


class FleetStore:
    """Reads the fleet through the gateway's connection pool.

    Args:
        pool: the gateway's pool.
        storage_mode: detected once at start-up; picks the bucketing function.

    Raises (every method):
        StorageError: the database cannot answer (unreachable, pool exhausted, or a query error).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], storage_mode: StorageMode) -> None:
        self._pool = pool
        self.storage_mode: StorageMode = storage_mode

    async def _fetch(
        self, query: sql.Composable, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        try:
            async with (
                self._pool.connection() as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute(query, params)
                rows: list[dict[str, Any]] = await cur.fetchall()
                return rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(f"the database cannot answer the fleet query: {exc}") from exc

    # -- vehicles ----------------------------------------------------------------------------

    async def list_vehicles(
        self, where: VehicleFilter, *, limit: int, cursor: str | None
    ) -> VehiclePage:
        """Cars matching `where`, in VIN order, `limit` at a time."""
        conditions, params = _conditions(where)
        count_rows = await self._fetch(
            sql.SQL("SELECT count(*) AS n {} {}").format(_STATE_FROM, _where(conditions)), params
        )
        page_conditions, page_params = list(conditions), list(params)
        if cursor is not None:
            (after,) = decode_cursor("vehicles", cursor, 1)
            page_conditions.append(sql.SQL("v.vin > %s"))
            page_params.append(str(after))
        rows = await self._fetch(
            sql.SQL("SELECT {} {} {} ORDER BY v.vin LIMIT %s").format(
                _STATE_COLUMNS, _STATE_FROM, _where(page_conditions)
            ),
            [*page_params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return VehiclePage(
            items=[vehicle_state(row) for row in rows],
            total=int(count_rows[0]["n"]),
            next_cursor=encode_cursor("vehicles", [rows[-1]["vin"]]) if more else None,
        )

    async def get_vehicle(self, vin: str) -> VehicleState | None:
        rows = await self._fetch(
            sql.SQL("SELECT {} {} WHERE v.vin = %s").format(_STATE_COLUMNS, _STATE_FROM), [vin]
        )
        return vehicle_state(rows[0]) if rows else None

    async def vehicle_exists(self, vin: str) -> bool:
        rows = await self._fetch(sql.SQL("SELECT 1 AS x FROM vehicles WHERE vin = %s"), [vin])
        return bool(rows)

    async def states_changed_since(self, since: datetime | None) -> list[dict[str, Any]]:
        """Every car's row (since None), or those whose state or connectivity moved after
        `since` (database clock); the live feed's query."""
        if since is None:
            condition: sql.Composable = sql.SQL("")
            params: list[Any] = []
        else:
            condition = sql.SQL(
                "WHERE ls.updated_at > %s OR v.last_seen_at > %s OR v.online_changed_at > %s"
            )
            params = [since, since, since]
        return await self._fetch(
            sql.SQL("SELECT {}, now() AS db_now {} {}").format(
                _STATE_COLUMNS, _STATE_FROM, condition
            ),
            params,
        )

    async def database_now(self) -> datetime:
        rows = await self._fetch(sql.SQL("SELECT now() AS now"))
        now: datetime = rows[0]["now"]
        return now

    # -- telemetry history -------------------------------------------------------------------

    async def history(self, vin: str, wanted: HistoryRange) -> TelemetryHistory:
        """A car's telemetry in [start, end), in buckets aligned on `start`."""
        range_s = (wanted.end - wanted.start).total_seconds()
        bucket_s = wanted.bucket_s or choose_bucket_s(range_s, wanted.max_points)
        bucket = sql.SQL("{fn}(make_interval(secs => %s), time, %s::timestamptz)").format(
            fn=sql.Identifier(_BUCKET_FUNCTION[self.storage_mode])
        )
        rows = await self._fetch(
            sql.SQL(
                "SELECT {bucket} AS time, {aggregates} FROM telemetry "
                "WHERE vin = %s AND time >= %s AND time < %s GROUP BY 1 ORDER BY 1"
            ).format(bucket=bucket, aggregates=_HISTORY_AGGREGATES),
            [bucket_s, wanted.start, vin, wanted.start, wanted.end],
        )
        points = [TelemetryPoint(time=row.pop("time"), **row) for row in rows]
        return TelemetryHistory(
            vin=vin,
            start=wanted.start,
            end=wanted.end,
            bucket_s=bucket_s,
            storage_mode=self.storage_mode,
            points=points,
        )

    # -- events ------------------------------------------------------------------------------

    async def events(
        self,
        *,
        vin: str | None,
        types: Sequence[str],
        start: datetime | None,
        end: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> EventPage:
        """Events, newest first."""
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        if vin is not None:
            conditions.append(sql.SQL("vin = %s"))
            params.append(vin)
        if types:
            conditions.append(sql.SQL("type = ANY(%s)"))
            params.append(list(types))
        if start is not None:
            conditions.append(sql.SQL("time >= %s"))
            params.append(start)
        if end is not None:
            conditions.append(sql.SQL("time < %s"))
            params.append(end)
        if cursor is not None:
            at, c_vin, c_boot, c_seq = decode_cursor("events", cursor, 4)
            conditions.append(sql.SQL("(time, vin, boot_id, seq) < (%s::timestamptz, %s, %s, %s)"))
            params += [at, c_vin, c_boot, c_seq]
        rows = await self._fetch(
            sql.SQL(
                "SELECT time, vin, type, data, boot_id, seq FROM events {} "
                "ORDER BY time DESC, vin DESC, boot_id DESC, seq DESC LIMIT %s"
            ).format(_where(conditions)),
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = encode_cursor(
                "events", [last["time"].isoformat(), last["vin"], last["boot_id"], last["seq"]]
            )
        return EventPage(items=[EventRecord(**row) for row in rows], next_cursor=next_cursor)

    # -- dead letters ------------------------------------------------------------------------

    async def dead_letters(
        self,
        *,
        reason: str | None,
        vin: str | None,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> DeadLetterPage:
        """Refused messages, newest first."""
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        for column, value in (("reason", reason), ("vin", vin)):
            if value is not None:
                conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if start is not None:
            conditions.append(sql.SQL("received_at >= %s"))
            params.append(start)
        if end is not None:
            conditions.append(sql.SQL("received_at < %s"))
            params.append(end)
        if cursor is not None:
            (before,) = decode_cursor("dead-letters", cursor, 1)
            if not isinstance(before, int):
                raise CursorError("the cursor is damaged")
            conditions.append(sql.SQL("id < %s"))
            params.append(before)
        rows = await self._fetch(
            sql.SQL(
                "SELECT id, received_at, topic, vin, reason, detail, payload, payload_size "
                "FROM dead_letters {} ORDER BY id DESC LIMIT %s"
            ).format(_where(conditions)),
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for row in rows:
            payload: bytes | None = row.pop("payload")
            items.append(
                DeadLetter(
                    **row,
                    payload_preview=None
                    if payload is None
                    else payload[:2048].decode("utf-8", errors="replace"),
                    payload_base64=None if payload is None else base64.b64encode(payload).decode(),
                )
            )
        next_cursor = encode_cursor("dead-letters", [rows[-1]["id"]]) if more else None
        return DeadLetterPage(items=items, next_cursor=next_cursor)


def _where(conditions: Sequence[sql.Composable]) -> sql.Composable:
    if not conditions:
        return sql.SQL("")
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(
        sql.SQL("({})").format(condition) for condition in conditions
    )


def _conditions(where: VehicleFilter) -> tuple[list[sql.Composable], list[Any]]:
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if where.online is not None:
        conditions.append(sql.SQL("(v.online AND NOT v.stale) = %s"))
        params.append(where.online)
    if where.locked is not None:
        conditions.append(sql.SQL("ls.locked = %s"))
        params.append(where.locked)
    if where.fuel_below is not None:
        # Electric cars have no fuel level: their charge stands in for it.
        conditions.append(sql.SQL("COALESCE(ls.fuel, ls.soc) < %s"))
        params.append(where.fuel_below)
    if where.bbox is not None:
        box = where.bbox
        conditions.append(sql.SQL("ls.lon BETWEEN %s AND %s AND ls.lat BETWEEN %s AND %s"))
        params += [box.min_lon, box.max_lon, box.min_lat, box.max_lat]
    if where.model is not None:
        conditions.append(sql.SQL("v.model = %s"))
        params.append(where.model)
    if where.search:
        conditions.append(sql.SQL("strpos(v.vin, %s) > 0"))
        params.append(where.search.upper())
    if where.alert is not None:
        conditions.append(_ALERT_SQL[where.alert])
    return conditions, params
