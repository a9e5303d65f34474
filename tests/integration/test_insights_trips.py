"""Trips derived from stored telemetry, on the real database in both storage modes.

Known days (hand-written and device_sim-driven) go in; the trips that come out must be exactly
the true ones: count, start and end, distance (odometer, cross-checked with the track), fuel,
harsh driving. Incremental refreshes over data arriving in pieces, late (a car's backlog after a
dead zone) and across restarts must end with the same trips as a computation from scratch: none
duplicated, none split.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.insights import InsightRefresher, RefreshOptions
from gateway.storage import StorageMode
from tests.integration.insights_support import (
    T0,
    Sample,
    ScriptedCar,
    TrueTrip,
    simulate_fleet,
    store,
    vin,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STRICT = RefreshOptions(overlap_s=0.0, rebuild_batch_cars=3)


@asynccontextmanager
async def refresher(
    dsn: str, mode: StorageMode, options: RefreshOptions = STRICT
) -> AsyncIterator[InsightRefresher]:
    """A refresher on its own pool: a new one is what a gateway restart looks like."""
    async with AsyncConnectionPool(dsn, min_size=1, max_size=3, open=False) as pool:
        yield InsightRefresher(pool, mode, options)


async def trips(dsn: str) -> list[dict[str, Any]]:
    async with (
        await psycopg.AsyncConnection.connect(dsn) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute("SELECT * FROM trips ORDER BY vin, start_time")
        return await cur.fetchall()


async def utilisation(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """The utilisation tables up to the hour and day closed an hour ago, rounded to
    milliseconds (idle time runs up to now: an hour or a day that closed between the two
    derivations compared would differ for that reason alone)."""
    queries = {
        "hourly": "SELECT bucket, vin, cell_y, cell_x, rented_s, idle_s, trips, km "
        "FROM utilisation_hourly WHERE bucket < date_trunc('hour', now() - interval '1 hour')",
        "model": "SELECT bucket, model, cars, rented_s, idle_s, trips, km "
        "FROM utilisation_model_hourly "
        "WHERE bucket < date_trunc('hour', now() - interval '1 hour')",
        "cell": "SELECT day, model, cell_y, cell_x, rented_s, idle_s, trips, km "
        "FROM utilisation_cell_daily WHERE day < date_trunc('day', now() - interval '1 hour')",
        "car": "SELECT day, vin, rented_s, idle_s, trips, km "
        "FROM utilisation_car_daily WHERE day < date_trunc('day', now() - interval '1 hour')",
    }
    result = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("SET TimeZone = 'UTC'")
        for name, query in queries.items():
            rows = await (await conn.execute(query)).fetchall()
            result[name] = sorted(
                (tuple(round(v, 3) if isinstance(v, float) else v for v in row) for row in rows),
                key=repr,
            )
    return result


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    ignore = {"computed_at"}
    return tuple(
        round(v, 9) if isinstance(v, float) else v for k, v in row.items() if k not in ignore
    )


def assert_same_trips(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Row for row equal; float columns within a relative 1e-12. A continued open trip adds its
    GNSS steps piece by piece, a derivation in one sum: the last bits may differ."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.keys() == want.keys()
        for column in want:
            if column == "computed_at":
                continue
            if isinstance(want[column], float):
                assert got[column] == pytest.approx(want[column], rel=1e-12, abs=1e-12), (
                    column,
                    got,
                    want,
                )
            else:
                assert got[column] == want[column], (column, got, want)


async def assert_utilisation_of_an_empty_slate(dsn: str, mode: StorageMode) -> None:
    """The utilisation kept up refresh by refresh equals one computed on an empty slate (every
    closed hour: the open one grows with the clock)."""
    pieced = await utilisation(dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "TRUNCATE trips, trip_tails, insight_vehicles, utilisation_hourly, "
            "utilisation_model_hourly, utilisation_cell_daily, utilisation_car_daily; "
            "UPDATE insight_state SET received_watermark = NULL, refreshed_at = NULL"
        )
        await conn.commit()
    async with refresher(dsn, mode) as insights:
        assert (await insights.refresh()).rebuild
    fresh = await utilisation(dsn)
    assert pieced["hourly"]
    for table in pieced:
        assert fresh[table] == pieced[table], table


def assert_matches_truth(rows: list[dict[str, Any]], truth: list[TrueTrip]) -> None:
    """Every true trip once, at its time (within the 1 s the unit may wait to sample), with its
    distance within 1 %."""
    assert len(rows) == len(truth), f"{len(rows)} trips derived, {len(truth)} true"
    expected = sorted(truth, key=lambda t: (t.vin, t.start))
    for row, true in zip(rows, expected, strict=True):
        assert row["vin"] == true.vin
        assert abs((row["start_time"] - true.start).total_seconds()) <= 1.0, (row, true)
        if true.end is None:
            assert row["end_time"] is None
            continue
        assert row["end_time"] is not None
        assert abs((row["end_time"] - true.end).total_seconds()) <= 1.0, (row, true)
        assert row["distance_km"] == pytest.approx(true.km, rel=0.01, abs=0.005), (row, true)


async def test_a_known_day_gives_exactly_its_trips(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    mode, dsn = migrated_database_any_mode
    car = ScriptedCar(vin(1), model="tgw_generic")
    car.park(60).rent().drive(12.5, 25, fuel_used=2.0).return_car()
    car.park(90).rent().drive(3.0, 10, fuel_used=0.5, brake_hard_at=[0.5]).return_car()
    car.park(30).rent().drive(7.0, 20, accelerate_hard_at=[0.3], door_ajar_at=[0.6])
    car.return_car().park(45)
    ev = ScriptedCar(vin(2), model="tgw_generic_ev", fuel=None, soc=70.0, lat=48.15)
    ev.park(10).rent().drive(20.0, 40, fuel_used=8.0).return_car().park(20)
    # A box without an ignition signal: the rental runs from unlock to lock.
    keyless = ScriptedCar(vin(3), model="vw_mqb", ignition=False)
    keyless.park(5).rent().drive(4.0, 15).return_car().park(5)
    cars = [car, ev, keyless]
    await store(
        dsn,
        [s for c in cars for s in c.samples],
        [e for c in cars for e in c.events],
        models={c.vin: c.model for c in cars},
    )
    async with refresher(dsn, mode) as insights:
        report = await insights.refresh()
    assert report.rebuild
    assert report.trips_written == 5

    rows = await trips(dsn)
    assert_matches_truth(rows, [t for c in cars for t in c.trips])
    first, second, third = (r for r in rows if r["vin"] == car.vin)
    assert first["detected_by"] == "ignition"
    assert first["start_time"] == car.trips[0].start
    assert first["end_time"] == car.trips[0].end
    # 25 minutes driving, then standing still until the ignition goes off.
    assert (first["end_time"] - first["start_time"]) == timedelta(minutes=25, seconds=6)
    assert first["distance_km"] == pytest.approx(12.5)
    assert first["odometer_km"] == pytest.approx(12.5)
    assert first["distance_check"] == "ok"
    assert first["gnss_km"] == pytest.approx(12.5, rel=0.01)
    assert first["fuel_start"] - first["fuel_end"] == pytest.approx(2.0, abs=0.01)
    assert first["start_lat"] == pytest.approx(48.137)
    assert first["start_lon"] == pytest.approx(11.575)
    assert first["end_lon"] == pytest.approx(11.575 + 12.5 / 74.3, abs=0.001)
    assert (first["harsh_brakes"], first["harsh_accels"], first["door_ajar"]) == (0, 0, 0)
    assert (second["harsh_brakes"], second["harsh_accels"], second["door_ajar"]) == (1, 0, 0)
    assert (third["harsh_brakes"], third["harsh_accels"], third["door_ajar"]) == (0, 1, 1)
    # 25 min at 5 s, plus the first sample, the stop and the ignition-off sample that ends it.
    assert first["samples"] == 25 * 12 + 3

    (electric,) = (r for r in rows if r["vin"] == ev.vin)
    assert electric["soc_start"] - electric["soc_end"] == pytest.approx(8.0, abs=0.01)
    assert electric["fuel_start"] is None
    (lock,) = (r for r in rows if r["vin"] == keyless.vin)
    assert lock["detected_by"] == "lock"
    assert lock["distance_km"] == pytest.approx(4.0)

    # Refreshing again with nothing new changes nothing.
    async with refresher(dsn, mode) as insights:
        again = await insights.refresh()
    assert (again.rebuild, again.cars, again.trips_written) == (False, 0, 0)
    assert [_key(r) for r in await trips(dsn)] == [_key(r) for r in rows]


async def test_trips_of_a_simulated_fleet_match_its_ledger(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    """device_sim's own driving model (what `tgw sim fleet` runs) for 6 cars and 8 hours."""
    mode, dsn = migrated_database_any_mode
    fleet = await asyncio.to_thread(simulate_fleet, 6, 8, seed=11)
    assert len(fleet.trips) > 20
    await store(dsn, fleet.samples, fleet.events, models=fleet.models)
    async with refresher(dsn, mode) as insights:
        await insights.refresh()
    rows = await trips(dsn)
    assert_matches_truth(rows, fleet.trips)
    checks = {row["distance_check"] for row in rows if row["end_time"] is not None}
    assert checks == {"ok"}, "odometer and GNSS track agree on device_sim's streets"


def _pieces(
    samples: list[Sample], every: timedelta, held_back: tuple[str, datetime, datetime]
) -> list[list[Sample]]:
    """The samples in arrival order: time slices, with one car's samples in a window held
    back (a dead zone) and delivered after everything else, oldest first."""
    late_vin, late_from, late_to = held_back
    start = min(s.time for s in samples)
    slices: dict[int, list[Sample]] = {}
    late: list[Sample] = []
    for sample in samples:
        if sample.vin == late_vin and late_from <= sample.time < late_to:
            late.append(sample)
        else:
            slices.setdefault(int((sample.time - start) / every), []).append(sample)
    ordered = [slices[k] for k in sorted(slices)]
    half = len(late) // 2
    return [*ordered, late[:half], late[half:]]


async def test_pieces_late_data_and_restarts_give_the_trips_of_a_rebuild(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    mode, dsn = migrated_database_any_mode
    fleet = await asyncio.to_thread(simulate_fleet, 4, 6, seed=5)
    late_vin = sorted(fleet.models)[1]
    # Hours 2 to 3:30 of one car arrive last (the car was underground), in two pieces.
    pieces = _pieces(
        fleet.samples,
        timedelta(minutes=20),
        (late_vin, T0 + timedelta(hours=2), T0 + timedelta(hours=3, minutes=30)),
    )
    # Also a piece that repeats earlier rows (a redelivery): the ingest skips them.
    pieces.insert(5, pieces[2][:50])
    writes: list[int] = []
    for index, piece in enumerate(pieces):
        # Every second piece a fresh refresher: a gateway restart in between.
        await store(dsn, piece, models=fleet.models, received_at=datetime.now(UTC))
        async with refresher(dsn, mode) as insights:
            report = await insights.refresh()
        assert not report.skipped
        writes.append(report.trips_written)
        if index == 0:
            assert report.rebuild
        else:
            assert not report.rebuild
            assert report.cars <= len(fleet.models)
    incremental = await trips(dsn)
    assert_matches_truth(incremental, fleet.trips)

    # A rebuild from scratch writes exactly the same rows.
    async with refresher(dsn, mode) as insights:
        rebuilt_report = await insights.rebuild()
    assert rebuilt_report.trips_written == len(fleet.trips)
    assert_same_trips(await trips(dsn), incremental)

    # And the utilisation kept up piece by piece equals one computed on an empty slate.
    assert len((await utilisation(dsn))["hourly"]) > 100
    await assert_utilisation_of_an_empty_slate(dsn, mode)


async def test_late_data_inside_a_gap_joins_the_trips(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    """A whole trip that arrives after later trips were derived, and the missing end of a trip
    (its ignition-off sample late): both end up exactly as if they had come in order."""
    mode, dsn = migrated_database_any_mode
    car = ScriptedCar(vin(4))
    car.park(30).rent().drive(5.0, 10).return_car()
    car.park(30).rent().drive(6.0, 12).return_car()
    car.park(30).rent().drive(7.0, 14).return_car().park(30)
    second = car.trips[1]
    late = [s for s in car.samples if second.start <= s.time <= second.end]
    on_time = [s for s in car.samples if s not in late]
    await store(dsn, on_time, models={car.vin: car.model}, received_at=datetime.now(UTC))
    async with refresher(dsn, mode) as insights:
        await insights.refresh()
    assert len(await trips(dsn)) == 2
    # Only the second trip's last sample (ignition off) arrives first: the trip stays open ...
    await store(dsn, late[:-1], received_at=datetime.now(UTC))
    async with refresher(dsn, mode) as insights:
        await insights.refresh()
    rows = await trips(dsn)
    assert len(rows) == 3
    assert rows[1]["end_time"] is None or rows[1]["end_time"] > second.end
    # ... and its end closes it.
    await store(dsn, late[-1:], received_at=datetime.now(UTC))
    async with refresher(dsn, mode) as insights:
        report = await insights.refresh()
    assert report.cars == 1
    rows = await trips(dsn)
    assert_matches_truth(rows, car.trips)


async def test_two_gateways_refresh_one_at_a_time(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> None:
    mode, dsn = migrated_database_any_mode
    fleet = await asyncio.to_thread(simulate_fleet, 3, 4, seed=8)
    await store(dsn, fleet.samples, models=fleet.models)
    async with refresher(dsn, mode) as first, refresher(dsn, mode) as second:
        await first.refresh()
        reports = await asyncio.gather(first.refresh(), second.refresh(), first.refresh())
    assert sum(not r.skipped for r in reports) >= 1
    assert_matches_truth(await trips(dsn), fleet.trips)


def _chunks(samples: list[Sample], sizes: tuple[int, ...]) -> list[list[Sample]]:
    """The samples in time order, cut into pieces of the given sizes over and over (so that the
    cuts fall everywhere: inside harsh braking, a door flapping open, at a trip's start)."""
    ordered = sorted(samples, key=lambda s: (s.time, s.vin))
    pieces: list[list[Sample]] = []
    index = 0
    while index < len(ordered):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(ordered[index : index + size])
        index += size
    return pieces


@pytest.mark.parametrize("overlap_s", [0.0, 600.0])
async def test_an_open_trip_is_continued_with_its_new_samples(
    migrated_database_any_mode: tuple[StorageMode, str], overlap_s: float
) -> None:
    """Long trips arriving a few samples at a time are continued at each refresh (only the new
    samples derived and folded in, never deleted and derived again from their start), through
    harsh braking and acceleration, a door ajar, their end, parking and the next trip; a late
    sample sends the car back to the derivation from its anchor once. The trips end exactly as
    a rebuild's (floats within 1e-12), and the utilisation as an empty slate's. With an overlap
    the refresher sees the samples it already folded in again: it must count them, not fold
    them twice."""
    mode, dsn = migrated_database_any_mode
    options = RefreshOptions(overlap_s=overlap_s, rebuild_batch_cars=3)
    long = ScriptedCar(vin(6))
    long.park(5).rent().drive(
        30.0,
        45,
        fuel_used=3.0,
        brake_hard_at=[0.2, 0.6],
        accelerate_hard_at=[0.35, 0.8],
        door_ajar_at=[0.5],
    ).return_car().park(10).rent().drive(4.0, 8, brake_hard_at=[0.5]).return_car().park(5)
    keyless = ScriptedCar(vin(7), ignition=False, fuel=None, soc=60.0, lat=48.15)
    keyless.park(8).rent().drive(25.0, 40, accelerate_hard_at=[0.4]).return_car().park(20)
    cars = [long, keyless]
    models = {c.vin: c.model for c in cars}
    pieces = _chunks([s for c in cars for s in c.samples], (11, 23, 1, 37, 2, 29, 3))
    # A sample of the first trip delivered late, after more of that trip was folded in.
    start, end = long.trips[0].start, long.trips[0].end
    assert end is not None
    middle = start + (end - start) / 2
    late_at = next(i for i, p in enumerate(pieces) if p[0].time > middle + timedelta(minutes=5))
    before = max((s for s in long.samples if s.time < middle), key=lambda s: s.time)
    late = Sample(before.time + timedelta(milliseconds=500), long.vin, 99_999, before.signals)
    reports = []
    for index, piece in enumerate(pieces):
        await store(dsn, piece, models=models, received_at=datetime.now(UTC))
        if index == late_at:
            await store(dsn, [late], received_at=datetime.now(UTC))
        async with refresher(dsn, mode, options) as insights:
            report = await insights.refresh()
        reports.append(report)
        if index == late_at:
            # The late sample lies before the last one folded in: derived from the anchor.
            assert report.trips_deleted >= 1
            assert report.cars_continued < report.cars
    incremental = await trips(dsn)
    assert_matches_truth(incremental, [t for c in cars for t in c.trips])
    first = next(r for r in incremental if r["vin"] == long.vin)
    assert first["samples"] == 1 + sum(start <= s.time <= end for s in long.samples)
    assert (first["harsh_brakes"], first["harsh_accels"], first["door_ajar"]) == (2, 2, 1)

    # Continued, never derived again from an anchor: every car in every refresh but the first
    # (a rebuild) and the one with the late sample; nothing deleted.
    on_time = [r for i, r in enumerate(reports) if i not in (0, late_at)]
    assert all(r.cars_continued == r.cars > 0 for r in on_time), [
        (r.cars, r.cars_continued) for r in on_time
    ]
    assert sum(r.trips_deleted for r in on_time) == 0

    async with refresher(dsn, mode, options) as insights:
        await insights.rebuild()
    assert_same_trips(await trips(dsn), incremental)
    await assert_utilisation_of_an_empty_slate(dsn, mode)
