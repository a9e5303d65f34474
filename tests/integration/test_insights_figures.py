"""Utilisation, service lists and wear on the real database, against figures worked out by hand.

A small fleet with a known day goes in; the refresher derives trips and utilisation; the
insight store must answer with exactly the seconds, shares, trips, cells, areas, reasons, route
order and rates per 1,000 km computed here from the script. The makers' report for a fixed
scenario must match the golden CSV files in tests/data/insights/makers/.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.insights import InsightRefresher, InsightStore, ServiceRules, cell_of
from gateway.insights.report import build_makers_report
from gateway.storage import StorageMode
from tests.integration.insights_support import FIXED_T0, T0, ScriptedCar, store, vin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "insights" / "makers"
# One operating area: exactly the grid cell around (48.137, 11.575).
CENTRE = [(11.56, 48.13), (11.585, 48.13), (11.585, 48.14), (11.56, 48.14)]


@asynccontextmanager
async def insights(dsn: str, mode: StorageMode) -> AsyncIterator[InsightStore]:
    """Refresh, then hand out a store over the same database."""
    async with AsyncConnectionPool(dsn, min_size=1, max_size=3, open=False) as pool:
        await InsightRefresher(pool, mode).refresh()
        yield InsightStore(pool, mode, {"centre": CENTRE})


def small_fleet() -> tuple[ScriptedCar, ScriptedCar, ScriptedCar]:
    """A: one 10 km trip after an hour; B: never rented; C: keyless, one hour-long rental."""
    a = ScriptedCar(vin(10), model="tgw_generic", lat=48.137, lon=11.575)
    a.park(60).rent().drive(10.0, 30).return_car().park(200)
    b = ScriptedCar(vin(11), model="bmw_e8x", lat=48.15, lon=11.60)
    b.park(300)
    c = ScriptedCar(vin(12), model="vw_mqb", lat=48.137, lon=11.575, ignition=False)
    c.park(120).rent().drive(5.0, 60).return_car().park(120)
    return a, b, c


async def test_utilisation_of_a_small_fleet_by_hand(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    mode, dsn = migrated_database_any_mode
    a, b, c = small_fleet()
    cars = (a, b, c)
    await store(
        dsn, [s for car in cars for s in car.samples], models={x.vin: x.model for x in cars}
    )
    (trip_a,), (trip_c,) = a.trips, c.trips
    assert trip_a.end is not None
    assert trip_c.end is not None
    # The script's clock: A rents at 1:00:12 for 30 min + 6 s, C from 2:00:00 to 3:00:33.
    assert trip_a.start - T0 == timedelta(hours=1, seconds=12)
    assert trip_a.end - trip_a.start == timedelta(minutes=30, seconds=6)
    assert (trip_c.start - T0, trip_c.end - T0) == (
        timedelta(hours=2),
        timedelta(hours=3, seconds=33),
    )
    rented_a, rented_c = 1806.0, 3633.0
    four_hours = 4 * 3600.0
    end = T0 + timedelta(hours=4)

    async with insights(dsn, mode) as figures:
        per_car = await figures.utilisation(start=T0, end=end, group_by="car", tz="UTC")
        by_car = {g.key: g for g in per_car.groups}
        assert by_car[a.vin].rented_s == rented_a
        assert by_car[a.vin].idle_s == four_hours - rented_a
        assert by_car[a.vin].rented_share == round(rented_a / four_hours, 4)
        assert by_car[a.vin].trips == 1
        assert by_car[a.vin].km == pytest.approx(10.0)
        assert by_car[a.vin].trips_per_car_day == 6.0  # 1 trip in 4 hours
        assert by_car[a.vin].trips_per_day == 6.0
        assert by_car[a.vin].model == "tgw_generic"
        assert by_car[a.vin].last_trip_end == trip_a.end
        now = await figures.database_now()
        idle_since = by_car[a.vin].idle_since_s
        assert idle_since == pytest.approx((now - trip_a.end).total_seconds(), abs=5)
        assert (by_car[b.vin].rented_s, by_car[b.vin].idle_s, by_car[b.vin].trips) == (
            0.0,
            four_hours,
            0,
        )
        assert by_car[b.vin].last_trip_end is None
        assert (by_car[c.vin].rented_s, by_car[c.vin].idle_s) == (
            rented_c,
            four_hours - rented_c,
        )
        assert per_car.total.cars == 3
        assert per_car.total.rented_s == rented_a + rented_c
        assert per_car.total.trips == 2
        # Most rented first.
        assert [g.key for g in per_car.groups] == [c.vin, a.vin, b.vin]
        assert per_car.groups_total == 3
        # Pages of that order; `total` and `groups_total` always cover every car.
        pages = [
            await figures.utilisation(
                start=T0, end=end, group_by="car", tz="UTC", limit=2, offset=offset
            )
            for offset in (0, 2, 3)
        ]
        assert [[g.key for g in page.groups] for page in pages] == [[c.vin, a.vin], [b.vin], []]
        assert {page.groups_total for page in pages} == {3}
        assert {page.total for page in pages} == {per_car.total}
        # A car's idle time is looked up for the page's cars too.
        assert pages[0].groups[1].last_trip_end == trip_a.end
        assert pages[0].groups[1].idle_since_s == pytest.approx(idle_since, abs=5)
        # Longest idle first: B never rented, A's rental ended before C's.
        idle = await figures.utilisation(start=T0, end=end, group_by="car", tz="UTC", sort="idle")
        assert [g.key for g in idle.groups] == [b.vin, a.vin, c.vin]
        assert idle.groups[1].rented_s == rented_a

        per_model = await figures.utilisation(start=T0, end=end, group_by="model", tz="UTC")
        models = {g.key: g for g in per_model.groups}
        assert models["tgw_generic"].rented_s == rented_a
        assert models["bmw_e8x"].idle_s == four_hours
        assert models["vw_mqb"].rented_s == rented_c
        assert {g.cars for g in per_model.groups} == {1}
        assert per_model.total.rented_share == round((rented_a + rented_c) / (3 * four_hours), 4)
        # The week profile: hour 1 holds A's rental, hour 2 C's, hour 3 C's last 33 s.
        hours = {cell.hour: cell for cell in per_model.by_hour}
        first = T0.hour
        assert hours[(first + 1) % 24].rented_share == round(rented_a / (3 * 3600), 4)
        assert hours[(first + 2) % 24].rented_share == round(3600 / (3 * 3600), 4)
        assert hours[(first + 3) % 24].rented_share == round(33 / (3 * 3600), 4)
        assert hours[(first + 1) % 24].trips == 1
        assert hours[first].rented_share == 0.0
        assert hours[(first + 5) % 24].rented_share is None  # no hour of the range
        # Day and hour from the same instant: T0 + 2 h is on the next day when T0 is 22:00 or later.
        c_hour = T0 + timedelta(hours=2)
        week = {(cell.day, cell.hour): cell for cell in per_model.week}
        assert week[(c_hour.isoweekday(), c_hour.hour)].rented_share == round(1 / 3, 4)
        # In Munich's time zone the same hours carry the local hour of day.
        local = await figures.utilisation(start=T0, end=end, group_by="model", tz="Europe/Berlin")
        offset = int(T0.astimezone(ZoneInfo("Europe/Berlin")).utcoffset().total_seconds() // 3600)  # type: ignore[union-attr]
        local_hours = {cell.hour: cell for cell in local.by_hour}
        assert local_hours[(first + 2 + offset) % 24].rented_share == round(1 / 3, 4)

        per_cell = await figures.utilisation(start=T0, end=end, group_by="cell", tz="UTC")
        cells = {g.key: g for g in per_cell.groups}
        start_cell = cell_of(48.137, 11.575).key
        a_end = cell_of(a.samples[-1].signals["lat"], a.samples[-1].signals["lon"]).key
        c_end = cell_of(c.samples[-1].signals["lat"], c.samples[-1].signals["lon"]).key
        b_cell = cell_of(48.15, 11.60).key
        assert len({start_cell, a_end, c_end, b_cell}) == 4
        # Rentals count where they started; idle time where the car stood.
        assert cells[start_cell].rented_s == rented_a + rented_c
        assert cells[start_cell].idle_s == 3612.0 + 7200.0
        assert cells[start_cell].trips == 2
        # Cars there on average: A until its rental ended, C until its own.
        assert cells[start_cell].cars == round((rented_a + rented_c + 3612 + 7200) / four_hours, 2)
        assert cells[a_end].idle_s == four_hours - 3612.0 - rented_a
        assert cells[c_end].idle_s == four_hours - 7200.0 - rented_c
        assert cells[b_cell].idle_s == four_hours
        assert cells[start_cell].bounds is not None
        south, west, north, east = cells[start_cell].bounds
        assert south <= 48.137 < north
        assert west <= 11.575 < east

        per_area = await figures.utilisation(start=T0, end=end, group_by="area", tz="UTC")
        areas = {g.key: g for g in per_area.groups}
        assert set(areas) == {"centre", "(outside)"}
        assert areas["centre"].rented_s == rented_a + rented_c
        assert areas["centre"].idle_s == cells[start_cell].idle_s
        assert areas["(outside)"].rented_s == 0.0

        # One car's own profile, and a model filter.
        only_c = await figures.utilisation(start=T0, end=end, group_by="model", tz="UTC", vin=c.vin)
        assert [g.key for g in only_c.groups] == ["vw_mqb"]
        assert only_c.total.rented_s == rented_c
        only_bmw = await figures.utilisation(
            start=T0, end=end, group_by="cell", tz="UTC", model="bmw_e8x"
        )
        assert [g.key for g in only_bmw.groups] == [b_cell]

        # Over days (whole UTC days from the daily rollups, the ends from the hours) the
        # groups add up to exactly what the hourly table holds.
        since = T0 - timedelta(hours=5, minutes=30)
        until = datetime.now(UTC)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT vin, sum(rented_s), sum(idle_s), sum(trips) FROM utilisation_hourly "
                "WHERE bucket >= date_trunc('hour', %s::timestamptz) AND bucket < %s "
                "GROUP BY vin",
                (since, until),
            )
            hourly = {row[0]: row[1:] for row in await cur.fetchall()}
        assert hourly[b.vin][1] > 40 * 3600  # two days of idle hours since its first sample
        for grouping in ("car", "model", "cell", "area"):
            long = await figures.utilisation(
                start=since, end=until, group_by=grouping, tz="Europe/Berlin"
            )
            assert long.total.rented_s == pytest.approx(sum(h[0] for h in hourly.values()))
            assert long.total.idle_s == pytest.approx(sum(h[1] for h in hourly.values()))
            assert long.total.trips == sum(h[2] for h in hourly.values())
            if grouping == "car":
                assert {g.key: g.idle_s for g in long.groups} == pytest.approx(
                    {vin: h[1] for vin, h in hourly.items()}
                )
            assert sum(c.trips for c in long.week) == 2


async def _insert(dsn: str, query: str, rows: list[tuple[Any, ...]]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(query, rows)
        await conn.commit()


async def test_service_list_reasons_and_refuelling_route(migrated_database: str) -> None:
    dsn = migrated_database
    now = datetime.now(UTC)
    cars: dict[str, dict[str, Any]] = {
        "F1": {"fuel": 10.0, "lat": 48.11, "lon": 11.50},
        "F2": {"fuel": 12.0, "lat": 48.13, "lon": 11.50, "online": False, "seen": 180},
        "F3": {"fuel": 8.0, "lat": 48.12, "lon": 11.50},
        "F4": {"fuel": 14.0, "lat": 48.20, "lon": 11.70},
        "E1": {"fuel": None, "soc": 9.0, "lat": 48.105, "lon": 11.50},
        "V1": {"batt_v": 11.4},
        "D1": {"door_rl_open": True},
        "O1": {"online": False, "seen": 120},
        "O2": {"online": False, "seen": 10},
        "S1": {"stale": True, "seen": 90},
        "I1": {"trip_end_h": 50},
        "I2": {"trip_end_h": 10},
        "I3": {"trip_start_h": 60, "in_trip": True},
        "H1": {},
    }
    vins = {name: vin(100 + i) for i, name in enumerate(cars)}
    vehicles, states, trips = [], [], []
    for name, spec in cars.items():
        car = vins[name]
        seen = now - timedelta(minutes=spec.get("seen", 1))
        vehicles.append(
            (car, "tgw_generic", spec.get("online", True), spec.get("stale", False), seen, seen)
        )
        states.append(
            (
                car,
                now,
                spec.get("lat", 48.14),
                spec.get("lon", 11.58),
                spec.get("fuel", 60.0),
                spec.get("soc"),
                spec.get("batt_v", 12.6),
                spec.get("in_trip", False),
                spec.get("door_rl_open", False),
            )
        )
        started = now - timedelta(hours=spec.get("trip_start_h", spec.get("trip_end_h", 3) + 1))
        ended = None if spec.get("in_trip") else now - timedelta(hours=spec.get("trip_end_h", 3))
        trips.append((car, started, ended))
    await _insert(
        dsn,
        "INSERT INTO vehicles (vin, model, online, stale, last_seen_at, online_changed_at) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        vehicles,
    )
    await _insert(
        dsn,
        "INSERT INTO latest_state (vin, time, boot_id, seq, lat, lon, fuel, soc, batt_v, "
        "ignition, speed, door_rl_open) VALUES (%s, %s, 'b', 1, %s, %s, %s, %s, %s, %s, 0, %s)",
        states,
    )
    await _insert(
        dsn,
        "INSERT INTO trips (vin, start_time, end_time, detected_by, distance_check, samples) "
        "VALUES (%s, %s, %s, 'ignition', 'unknown', 2)",
        trips,
    )
    await _insert(
        dsn,
        "INSERT INTO insight_vehicles (vin, first_seen) VALUES (%s, %s)",
        [(car, now - timedelta(days=5)) for car in vins.values()],
    )
    name_of = {v: k for k, v in vins.items()}
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        figures = InsightStore(pool, "postgres")
        listed = await figures.service_list(
            ServiceRules(offline_minutes=60, idle_hours=48),
            start=(48.10, 11.50),
            route_energy="fuel",
        )
        names = [name_of[item.vin] for item in listed.items]
        # The route first (nearest neighbour from the start), then the rest by reason.
        offline = sorted(["O1", "S1"], key=lambda name: vins[name])
        assert names == ["F1", "F3", "F2", "F4", "E1", "V1", "D1", *offline, "I1"]
        assert listed.route is not None
        assert [name_of[v] for v in listed.route.stops] == ["F1", "F3", "F2", "F4"]
        first = listed.items[0]
        assert (first.stop, first.leg_km) == (1, pytest.approx(1.112, abs=0.01))
        assert listed.route.total_km == pytest.approx(listed.items[3].cumulative_km)
        reasons = {name_of[item.vin]: [r.kind for r in item.reasons] for item in listed.items}
        assert reasons["F2"] == ["low_fuel", "offline"]
        assert reasons["E1"] == ["low_charge"]
        assert reasons["V1"] == ["low_battery"]
        assert reasons["D1"] == ["door_open_parked"]
        assert reasons["O1"] == ["offline"]
        assert reasons["S1"] == ["offline"]
        assert reasons["I1"] == ["not_rented"]
        messages = {name_of[item.vin]: item.reasons[0].message for item in listed.items}
        assert messages["F3"] == "fuel at 8 % (below 15 %)"
        assert messages["V1"] == "12 V battery at 11.4 V (below 11.8 V)"
        assert messages["D1"] == "rear left door open while parked"
        assert messages["O1"] == "offline for 2 h"
        assert messages["I1"] == "not rented for 2.1 days: relocate?"
        assert listed.thresholds["idle_hours"] == 48

        # Charging and refuelling in one round: the electric car near the start comes first.
        both = await figures.service_list(ServiceRules(), start=(48.10, 11.50))
        assert both.route is not None
        assert [name_of[v] for v in both.route.stops] == ["E1", "F1", "F3", "F2", "F4"]
        # Tighter thresholds list fewer cars.
        strict = await figures.service_list(
            ServiceRules(fuel_below=9, voltage_below=10, idle_hours=100, offline_minutes=150),
            start=None,
        )
        assert sorted(name_of[item.vin] for item in strict.items) == ["D1", "F2", "F3"]


def wear_fleet() -> list[ScriptedCar]:
    """Two days of four cars with known wear and misuse (fixed dates: golden files)."""
    g1 = ScriptedCar(vin(20), model="tgw_generic", start=FIXED_T0)
    g1.park(30).rent().drive(12.5, 20, brake_hard_at=[0.5]).return_car()
    g1.park(60).event("low_voltage", voltage_v=11.6).park(60)
    g1.rent().drive(7.5, 15, door_ajar_at=[0.4]).return_car().park(30)
    g1.event("low_voltage", voltage_v=11.5).park(24 * 60)
    g1.rent().drive(10.0, 20).return_car().park(10)
    g2 = ScriptedCar(vin(21), model="tgw_generic", start=FIXED_T0, lat=48.15)
    g2.park(10).rent().drive(30.0, 40, accelerate_hard_at=[0.25]).return_car().park(10)
    for _ in range(3):
        g2.event("signal_out_of_range", signal="fuel", value=140.0, minimum=0, maximum=100)
        g2.park(5)
    g3 = ScriptedCar(vin(22), model="vw_mqb", start=FIXED_T0, lat=48.16)
    g3.park(90).rent().drive(40.0, 50).return_car().event("low_voltage", voltage_v=11.7)
    g3.park(10)
    g4 = ScriptedCar(vin(23), model="bmw_e8x", start=FIXED_T0, lat=48.17)
    g4.park(120)
    return [g1, g2, g3, g4]


async def _failed_commands(dsn: str, failures: list[tuple[str, datetime]]) -> None:
    await _insert(
        dsn,
        "INSERT INTO commands (vin, action, status, requested_by, created_at, expires_at) "
        "VALUES (%s, 'unlock', 'failed', 'test', %s, %s)",
        [(car, at, at + timedelta(seconds=30)) for car, at in failures],
    )
    await _insert(
        dsn,
        "INSERT INTO commands (vin, action, status, requested_by, created_at, expires_at) "
        "VALUES (%s, 'lock', 'verified', 'test', %s, %s)",
        [(car, at, at + timedelta(seconds=30)) for car, at in failures],
    )


async def test_wear_per_model_and_the_makers_report_match_the_golden_files(
    migrated_database_any_mode: tuple[StorageMode, str], tmp_path: Path
) -> None:
    mode, dsn = migrated_database_any_mode
    cars = wear_fleet()
    g1, g2, g3, g4 = cars
    await store(
        dsn,
        [s for c in cars for s in c.samples],
        [e for c in cars for e in c.events],
        models={c.vin: c.model for c in cars},
    )
    await _failed_commands(
        dsn, [(g1.vin, FIXED_T0 + timedelta(hours=5)), (g4.vin, FIXED_T0 + timedelta(hours=1))]
    )
    start, end = FIXED_T0 - timedelta(hours=1), FIXED_T0 + timedelta(days=2)
    async with insights(dsn, mode) as figures:
        report = await figures.wear(start, end, "model")
        models = {row.key: row for row in report.rows}
        generic = models["tgw_generic"]
        assert (generic.cars, generic.trips, generic.km) == (2, 4, pytest.approx(60.0))
        counts = generic.counts
        assert (counts.harsh_braking, counts.harsh_acceleration, counts.door_ajar) == (1, 1, 1)
        assert (counts.low_voltage, counts.signal_out_of_range, counts.command_failed) == (2, 3, 1)
        assert generic.per_1000_km["signal_out_of_range"] == 50.0  # 3 in 60 km
        assert generic.per_1000_km["low_voltage"] == pytest.approx(33.333, abs=0.001)
        assert models["vw_mqb"].per_1000_km["low_voltage"] == 25.0  # 1 in 40 km
        bmw = models["bmw_e8x"]
        assert (bmw.km, bmw.counts.command_failed, bmw.per_1000_km["command_failed"]) == (
            0.0,
            1,
            None,
        )
        assert report.fleet.km == pytest.approx(100.0)
        assert report.fleet.cars == 4
        per_car = {row.key: row for row in (await figures.wear(start, end, "car")).rows}
        assert per_car[g1.vin].counts.harsh_braking == 1
        assert per_car[g2.vin].counts.harsh_acceleration == 1
        assert per_car[g3.vin].km == pytest.approx(40.0)
        # Only the second day: g1's third trip.
        second_day = await figures.wear(
            FIXED_T0 + timedelta(hours=20), FIXED_T0 + timedelta(days=2), "car"
        )
        assert [(r.key, r.trips) for r in second_day.rows] == [(g1.vin, 1)]

        days: list[tuple[int, int]] = []
        out = tmp_path / "report"
        made = await build_makers_report(
            figures, start, end, out, on_progress=lambda d, n: days.append((d, n))
        )
    assert days == [(1, 3), (2, 3), (3, 3)]
    assert sorted(p.name for p in made.files) == [
        "bmw_e8x.csv",
        "bmw_e8x.png",
        "tgw_generic.csv",
        "tgw_generic.png",
        "vw_mqb.csv",
        "vw_mqb.png",
    ]
    if os.environ.get("TGW_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in ("bmw_e8x.csv", "tgw_generic.csv", "vw_mqb.csv"):
            shutil.copyfile(out / name, GOLDEN / name)
    for name in ("bmw_e8x.csv", "tgw_generic.csv", "vw_mqb.csv"):
        assert filecmp.cmp(out / name, GOLDEN / name, shallow=False), (
            f"{name} differs from the golden file:\n{(out / name).read_text()}"
        )
    png = (out / "tgw_generic.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000
