"""Utilisation materialised per car, UTC hour and grid cell (`utilisation_hourly`).

A car's timeline, from when it was first seen, is a sequence of trips (rented) and the gaps
between them (idle: parked, waiting for the next renter). Rented time counts in the cell where
the rental started, idle time in the cell where the car stood. The refresher rebuilds each car's
rows from an hour onwards: for every car, the hour it last refreshed (the open hour keeps
growing while the car stands), and for a car whose trips changed, the hour its last unchanged
trip ended. Hours are UTC buckets made with `time_bucket` (TimescaleDB) or `date_bin` (plain
PostgreSQL); hour of day and day of week are taken in the caller's time zone when queried.

TimescaleDB's Apache edition has no continuous aggregates, and the timeline is not an aggregate
of rows anyway (an idle gap has no samples), so this is a table the gateway keeps itself.
"""

from __future__ import annotations

from typing import Final

from gateway.insights.grid import CELL_LAT_DEG, CELL_LON_DEG
from gateway.storage import StorageMode

__all__ = [
    "CREATE_UTIL_SCOPE",
    "DELETE_SCOPED_UTILISATION",
    "day_bucket",
    "hour_bucket",
    "materialise_sql",
    "rollup_sql",
    "scope_utilisation",
]

CREATE_UTIL_SCOPE: Final = """
CREATE TEMP TABLE IF NOT EXISTS tgw_util_scope (
    vin       text        PRIMARY KEY,
    from_hour timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""


def hour_bucket(mode: StorageMode, expression: str) -> str:
    """SQL for the UTC hour that `expression` (a timestamptz) falls in."""
    if mode == "timescaledb":
        return f"time_bucket(interval '1 hour', {expression})"
    return f"date_bin(interval '1 hour', {expression}, timestamptz '2000-01-01 00:00:00+00')"


def scope_utilisation(mode: StorageMode) -> str:
    """Every known car, from the hour of the last refresh (or its first sighting); a car whose
    trips changed (tgw_trip_changes), from where its timeline changed."""
    since = hour_bucket(
        mode,
        "greatest(iv.first_seen, least(coalesce(%(refreshed_at)s::timestamptz, iv.first_seen), "
        "coalesce(c.since, 'infinity')))",
    )
    return f"""
INSERT INTO tgw_util_scope (vin, from_hour)
SELECT iv.vin, {since}
FROM insight_vehicles iv
LEFT JOIN tgw_trip_changes c ON c.vin = iv.vin
"""  # noqa: S608  # built from this module's constants, never from input


# The constant bound (the earliest from_hour) lets the planner read only those hours.
DELETE_SCOPED_UTILISATION: Final = """
DELETE FROM utilisation_hourly u USING tgw_util_scope s
WHERE u.vin = s.vin AND u.bucket >= s.from_hour AND u.bucket >= %(earliest)s
"""


def materialise_sql(mode: StorageMode) -> str:
    """INSERT the rows of every car in tgw_util_scope from its from_hour up to %(now)s."""
    first_hour = hour_bucket(mode, "greatest(seg.s, sc.from_hour)")
    return f"""
INSERT INTO utilisation_hourly (bucket, vin, cell_y, cell_x, rented_s, idle_s, trips, km)
WITH sc AS (
    SELECT u.vin, u.from_hour, iv.first_seen, prev.start_time AS prev_start
    FROM tgw_util_scope u
    JOIN insight_vehicles iv ON iv.vin = u.vin
    -- The last trip that ended before from_hour: the car stood where it ended until the next.
    LEFT JOIN LATERAL (
        SELECT p.start_time FROM trips p
        WHERE p.vin = u.vin AND p.end_time < u.from_hour
        ORDER BY p.start_time DESC LIMIT 1
    ) prev ON true
), tl AS (
    SELECT t.vin, t.start_time, t.end_time, t.start_lat, t.start_lon, t.end_lat, t.end_lon,
           t.distance_km,
           lead(t.start_time) OVER (PARTITION BY t.vin ORDER BY t.start_time) AS next_start,
           row_number() OVER (PARTITION BY t.vin ORDER BY t.start_time) AS n
    FROM sc
    -- Per car through the primary key: a few trips each, not a pass over all of them.
    CROSS JOIN LATERAL (
        SELECT * FROM trips t
        WHERE t.vin = sc.vin AND t.start_time >= coalesce(sc.prev_start, '-infinity')
    ) t
), seg AS (
    -- Rented: the trip (an open one until now), where it started.
    SELECT vin, start_time AS s, least(coalesce(end_time, %(now)s), %(now)s) AS e, true AS rented,
           start_lat AS lat, start_lon AS lon, start_time AS started_at,
           coalesce(distance_km, 0) AS km
    FROM tl
    UNION ALL
    -- Idle: after the trip, where it ended, until the next trip (or now).
    SELECT vin, end_time, least(coalesce(next_start, %(now)s), %(now)s), false,
           end_lat, end_lon, NULL, 0
    FROM tl WHERE end_time IS NOT NULL
    UNION ALL
    -- Idle before the car's first trip, from when it was first seen, where that trip started
    -- (or, never rented, where it stands now).
    SELECT sc.vin, sc.first_seen, least(coalesce(f.start_time, %(now)s), %(now)s), false,
           coalesce(f.start_lat, ls.lat), coalesce(f.start_lon, ls.lon), NULL, 0
    FROM sc
    LEFT JOIN tl f ON f.vin = sc.vin AND f.n = 1
    LEFT JOIN latest_state ls ON ls.vin = sc.vin
    WHERE sc.prev_start IS NULL
), piece AS (
    SELECT seg.vin, seg.rented, seg.lat, seg.lon, seg.started_at, seg.km, h AS bucket,
           greatest(seg.s, h, sc.from_hour) AS ps,
           least(seg.e, h + interval '1 hour') AS pe
    FROM seg
    JOIN sc ON sc.vin = seg.vin
    CROSS JOIN LATERAL generate_series(
        {first_hour}, seg.e - interval '1 microsecond', interval '1 hour'
    ) AS h
    WHERE seg.e > seg.s AND seg.e > sc.from_hour
)
SELECT bucket, vin,
       floor(lat / {CELL_LAT_DEG})::int AS cell_y,
       floor(lon / {CELL_LON_DEG})::int AS cell_x,
       coalesce(sum(extract(epoch FROM pe - ps)) FILTER (WHERE rented), 0),
       coalesce(sum(extract(epoch FROM pe - ps)) FILTER (WHERE NOT rented), 0),
       count(*) FILTER (WHERE rented AND ps = started_at),
       coalesce(sum(km) FILTER (WHERE rented AND ps = started_at), 0)
FROM piece
GROUP BY bucket, vin, 3, 4
"""  # noqa: S608  # built from this module's constants, never from input


def day_bucket(mode: StorageMode, expression: str) -> str:
    """SQL for the UTC day that `expression` (a timestamptz) falls in."""
    if mode == "timescaledb":
        return f"time_bucket(interval '1 day', {expression})"
    return f"date_bin(interval '1 day', {expression}, timestamptz '2000-01-01 00:00:00+00')"


def rollup_sql(mode: StorageMode) -> list[str]:
    """Rebuild the rollups from utilisation_hourly: per model from the hour %(since)s, per cell
    and per car from the UTC day that hour falls in (a day's row sums all its hours)."""
    day = day_bucket(mode, "%(since)s")
    day_of_bucket = day_bucket(mode, "u.bucket")
    return [
        "DELETE FROM utilisation_model_hourly WHERE bucket >= %(since)s",
        """
        INSERT INTO utilisation_model_hourly (bucket, model, cars, rented_s, idle_s, trips, km)
        SELECT u.bucket, v.model, count(DISTINCT u.vin), sum(u.rented_s), sum(u.idle_s),
               sum(u.trips), sum(u.km)
        FROM utilisation_hourly u
        LEFT JOIN vehicles v ON v.vin = u.vin
        WHERE u.bucket >= %(since)s
        GROUP BY u.bucket, v.model
        """,
        f"DELETE FROM utilisation_cell_daily WHERE day >= {day}",  # noqa: S608  # constants
        f"""
        INSERT INTO utilisation_cell_daily
            (day, model, cell_y, cell_x, rented_s, idle_s, trips, km)
        SELECT {day_of_bucket}, v.model, u.cell_y, u.cell_x, sum(u.rented_s), sum(u.idle_s),
               sum(u.trips), sum(u.km)
        FROM utilisation_hourly u
        LEFT JOIN vehicles v ON v.vin = u.vin
        WHERE u.bucket >= {day}
        GROUP BY 1, v.model, u.cell_y, u.cell_x
        """,  # noqa: S608  # built from this module's constants, never from input
        f"DELETE FROM utilisation_car_daily WHERE day >= {day}",  # noqa: S608  # constants
        f"""
        INSERT INTO utilisation_car_daily (day, vin, rented_s, idle_s, trips, km)
        SELECT {day_of_bucket}, u.vin, sum(u.rented_s), sum(u.idle_s), sum(u.trips), sum(u.km)
        FROM utilisation_hourly u
        WHERE u.bucket >= {day}
        GROUP BY 1, u.vin
        """,  # noqa: S608  # built from this module's constants, never from input
    ]
