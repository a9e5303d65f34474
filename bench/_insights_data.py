"""A month of a large fleet written straight into the database, for the insights benchmark.

Not through MQTT (that would take the month): a rental plan is drawn in Python (per car: parked
gaps shaped by the hour of day, about five trips a day of 1 to 8 km in a straight line at 18 to
40 km/h), and PostgreSQL expands it into telemetry rows with `generate_series`, the way the
in-car unit samples: every `driving_interval_s` while the ignition is on, an ignition-off sample
at the end, and every `parked_interval_s` while parked. One day of the plan per statement, so
progress shows.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg

__all__ = ["FleetPlan", "load_fleet", "plan_fleet", "write_latest_state", "write_span"]

MODELS = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")
_BOX = (48.06, 48.22, 11.45, 11.72)  # Munich: lat min/max, lon min/max
_KM_PER_DEG_LAT = 111.2
# Demand by UTC hour (Munich is UTC+1/+2): quiet nights, a morning and an evening peak.
_DEMAND = [0.15, 0.1, 0.1, 0.1, 0.2, 0.6, 1.4, 2.0, 1.6, 1.0, 0.9, 1.0,
           1.1, 1.0, 1.0, 1.3, 1.9, 2.1, 1.6, 1.1, 0.8, 0.6, 0.4, 0.25]  # fmt: skip


@dataclass
class FleetPlan:
    """The drawn plan: trips and parked spans per car (epoch seconds), and the cars' models."""

    start: datetime
    end: datetime
    models: dict[str, str]
    trips: list[tuple[object, ...]]
    parked: list[tuple[object, ...]]


def _vin(rng: random.Random) -> str:
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    return "TGWB" + "".join(rng.choice(alphabet) for _ in range(13))


def plan_fleet(
    cars: int, start: datetime, end: datetime, *, seed: int = 1, trips_per_day: float = 10.0
) -> FleetPlan:
    """Draw every car's rentals in [start, end)."""
    rng = random.Random(seed)  # benchmark data, not security
    t_start, t_end = start.timestamp(), end.timestamp()
    mean_gap_s = 86400 / trips_per_day
    models: dict[str, str] = {}
    trips: list[tuple[object, ...]] = []
    parked: list[tuple[object, ...]] = []
    while len(models) < cars:
        vin = _vin(rng)
        if vin in models:
            continue
        model = MODELS[len(models) % len(MODELS)]
        models[vin] = model
        ev = model.endswith("_ev")
        lat = rng.uniform(_BOX[0], _BOX[1])
        lon = rng.uniform(_BOX[2], _BOX[3])
        odometer = rng.uniform(5_000, 90_000)
        level = rng.uniform(30, 95)
        t = t_start
        while t < t_end:
            hour = int(t // 3600) % 24
            gap = rng.expovariate(1 / (mean_gap_s / _DEMAND[hour]))
            parked.append((vin, t, min(t + gap, t_end), lat, lon, odometer, level, ev))
            t += gap
            if t >= t_end:
                break
            # A destination 1 to 8 km away inside the city (cars stay in their operating area).
            for _ in range(20):
                km = rng.uniform(1.0, 8.0)
                bearing = rng.uniform(0, 2 * math.pi)
                lat1 = lat + km * math.cos(bearing) / _KM_PER_DEG_LAT
                lon1 = lon + km * math.sin(bearing) / (
                    _KM_PER_DEG_LAT * math.cos(math.radians(lat))
                )
                if _BOX[0] <= lat1 <= _BOX[1] and _BOX[2] <= lon1 <= _BOX[3]:
                    break
            else:
                lat1, lon1 = (_BOX[0] + _BOX[1]) / 2, (_BOX[2] + _BOX[3]) / 2
                bearing = math.atan2((lon1 - lon) * math.cos(math.radians(lat)), lat1 - lat)
                km = math.hypot(
                    (lat1 - lat) * _KM_PER_DEG_LAT,
                    (lon1 - lon) * _KM_PER_DEG_LAT * math.cos(math.radians(lat)),
                )
            speed = rng.uniform(18, 40)
            duration = round(km / speed * 3600)
            used = km * (0.32 if ev else 0.14)
            heading = math.degrees(bearing) % 360
            trips.append(
                (vin, t, duration, lat, lon, lat1, lon1, km, speed, heading, odometer, level, used,
                 ev)
            )  # fmt: skip
            t += duration
            lat, lon, odometer = lat1, lon1, odometer + km
            level -= used
            if level < 15 and rng.random() < 0.7:
                level = rng.uniform(85, 98)  # the service crew came by
    return FleetPlan(start, end, models, trips, parked)


_DRIVING = """
INSERT INTO telemetry (time, vin, boot_id, seq, received_at, lat, lon, heading, speed, fuel, soc,
                       odometer, batt_v, ignition, locked, door_fl_open, door_fr_open,
                       door_rl_open, door_rr_open, trunk_open)
SELECT x.ts, p.vin, 'bench', (extract(epoch FROM x.ts) * 1000)::bigint,
       {received}, p.lat0 + (p.lat1 - p.lat0) * x.f, p.lon0 + (p.lon1 - p.lon0) * x.f,
       p.heading, CASE WHEN g.s = 0 OR g.s = p.dur THEN 0 ELSE p.speed END,
       CASE WHEN p.ev THEN NULL ELSE p.level0 - p.used * x.f END,
       CASE WHEN p.ev THEN p.level0 - p.used * x.f END,
       p.odo0 + p.km * x.f, CASE WHEN g.s = p.dur THEN 12.6 ELSE 14.1 END,
       g.s < p.dur, g.s = p.dur, false, false, false, false, false
FROM bench_trips p
CROSS JOIN LATERAL (
    SELECT s FROM generate_series(0, p.dur - 1, %(step)s) AS s UNION ALL SELECT p.dur
) AS g (s)
CROSS JOIN LATERAL (
    SELECT to_timestamp(p.t0 + g.s) AS ts, g.s::float8 / greatest(p.dur, 1) AS f
) AS x
WHERE p.t0 >= %(lo)s AND p.t0 < %(hi)s AND p.t0 + p.dur >= %(cut_lo_s)s
  AND p.t0 < %(cut_hi_s)s AND x.ts >= %(cut_lo)s AND x.ts < %(cut_hi)s
"""

_PARKED = """
INSERT INTO telemetry (time, vin, boot_id, seq, received_at, lat, lon, heading, speed, fuel, soc,
                       odometer, batt_v, ignition, locked, door_fl_open, door_fr_open,
                       door_rl_open, door_rr_open, trunk_open)
SELECT x.ts, p.vin, 'bench', (extract(epoch FROM x.ts) * 1000)::bigint, {received},
       p.lat, p.lon, 0, 0, CASE WHEN p.ev THEN NULL ELSE p.level END,
       CASE WHEN p.ev THEN p.level END, p.odo, 12.6, false, true,
       false, false, false, false, false
FROM bench_parked p
CROSS JOIN LATERAL generate_series(
    -- The first parked sample comes a period after the ignition-off sample (none at t0 itself
    -- except at the very start of the plan).
    ceil(p.t0)::bigint + CASE WHEN p.t0 = %(plan_start)s THEN 0 ELSE %(parked_step)s::bigint END,
    ceil(p.t1)::bigint - 1, %(parked_step)s::bigint) AS g (s)
CROSS JOIN LATERAL (SELECT to_timestamp(g.s) AS ts) AS x
WHERE p.t0 >= %(lo)s AND p.t0 < %(hi)s AND p.t1 >= %(cut_lo_s)s AND p.t0 < %(cut_hi_s)s
  AND x.ts >= %(cut_lo)s AND x.ts < %(cut_hi)s
"""


def _copy_rows(rows: list[tuple[object, ...]]) -> bytes:
    out = io.StringIO()
    for row in rows:
        out.write("\t".join("t" if v is True else "f" if v is False else str(v) for v in row))
        out.write("\n")
    return out.getvalue().encode()


def load_fleet(
    conn: psycopg.Connection[tuple[object, ...]],
    plan: FleetPlan,
    *,
    cut: datetime,
    driving_interval_s: int,
    parked_interval_s: int,
    on_day: Callable[[int, int, int], None] | None = None,
) -> int:
    """Write the plan's telemetry before `cut` (received a second after each sample), the
    registry and the plan tables; return the rows written."""
    with conn.cursor() as cur:
        cur.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_trips (vin text, t0 float8, dur int, "
            "lat0 float8, lon0 float8, lat1 float8, lon1 float8, km float8, speed float8, "
            "heading float8, odo0 float8, level0 float8, used float8, ev boolean); "
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_parked (vin text, t0 float8, t1 float8, "
            "lat float8, lon float8, odo float8, level float8, ev boolean); "
            "TRUNCATE bench_trips, bench_parked"
        )
        with cur.copy("COPY bench_trips FROM STDIN") as copy:
            copy.write(_copy_rows(plan.trips))
        with cur.copy("COPY bench_parked FROM STDIN") as copy:
            copy.write(_copy_rows(plan.parked))
        cur.execute("CREATE INDEX ON bench_trips (t0); CREATE INDEX ON bench_parked (t0)")
        cur.execute("ANALYZE bench_trips; ANALYZE bench_parked")
        cur.executemany(
            "INSERT INTO vehicles (vin, model, online, last_seen_at, online_changed_at, "
            "capabilities) VALUES (%s, %s, true, now(), now(), '{lock,unlock}') "
            "ON CONFLICT (vin) DO NOTHING",
            list(plan.models.items()),
        )
    conn.commit()
    days = math.ceil((plan.end - plan.start).total_seconds() / 86400)
    written = 0
    for day in range(days):
        lo = plan.start.timestamp() + day * 86400
        rows = write_span(
            conn,
            plan,
            lo=lo,
            hi=lo + 86400,
            cut=(plan.start, cut),
            driving_interval_s=driving_interval_s,
            parked_interval_s=parked_interval_s,
            received_now=False,
        )
        written += rows
        if on_day is not None:
            on_day(day + 1, days, written)
    return written


def write_span(
    conn: psycopg.Connection[tuple[object, ...]],
    plan: FleetPlan,
    *,
    lo: float,
    hi: float,
    cut: tuple[datetime, datetime],
    driving_interval_s: int,
    parked_interval_s: int,
    received_now: bool,
) -> int:
    """Rows of the plan's trips and parked spans that start in [lo, hi), timed in [cut)."""
    received = "now()" if received_now else "x.ts + interval '1 second'"
    params = {
        "lo": lo,
        "hi": hi,
        "cut_lo": cut[0],
        "cut_hi": cut[1],
        "cut_lo_s": cut[0].timestamp(),
        "cut_hi_s": cut[1].timestamp(),
        "step": driving_interval_s,
        "parked_step": parked_interval_s,
        "plan_start": plan.start.timestamp(),
    }
    with conn.cursor() as cur:
        cur.execute(_DRIVING.replace("{received}", received), params)
        rows = cur.rowcount
        cur.execute(_PARKED.replace("{received}", received), params)
        rows += cur.rowcount
    conn.commit()
    return rows


def write_latest_state(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """latest_state from each car's newest sample (what the ingest keeps)."""
    conn.execute(
        """
        INSERT INTO latest_state (vin, time, boot_id, seq, lat, lon, heading, speed, fuel, soc,
                                  odometer, batt_v, ignition, locked, door_fl_open, door_fr_open,
                                  door_rl_open, door_rr_open, trunk_open)
        SELECT DISTINCT ON (v.vin) t.vin, t.time, t.boot_id, t.seq, t.lat, t.lon, t.heading,
               t.speed, t.fuel, t.soc, t.odometer, t.batt_v, t.ignition, t.locked,
               t.door_fl_open, t.door_fr_open, t.door_rl_open, t.door_rr_open, t.trunk_open
        FROM vehicles v
        CROSS JOIN LATERAL (
            SELECT * FROM telemetry t WHERE t.vin = v.vin ORDER BY time DESC LIMIT 1
        ) t
        ON CONFLICT (vin) DO UPDATE SET time = EXCLUDED.time, lat = EXCLUDED.lat,
            lon = EXCLUDED.lon, speed = EXCLUDED.speed, fuel = EXCLUDED.fuel,
            soc = EXCLUDED.soc, odometer = EXCLUDED.odometer, batt_v = EXCLUDED.batt_v,
            ignition = EXCLUDED.ignition, locked = EXCLUDED.locked
        """
    )
    conn.commit()
