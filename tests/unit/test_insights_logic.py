"""Pure parts of the insights: the grid, the crew's route, wear rates, the makers' CSV, the
service rules' messages, track downsampling."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.insights import Cell, WearCounts, cell_of, combine_wear, haversine_km, plan_route
from gateway.insights.grid import point_in_polygon
from gateway.insights.models import TrackPoint
from gateway.insights.report import CSV_COLUMNS, render_csv
from gateway.insights.store import _downsample, _duration, _profiles, wear_row

pytestmark = pytest.mark.unit


def test_cells_are_fixed_in_degrees() -> None:
    marienplatz = cell_of(48.137154, 11.576124)
    assert marienplatz == Cell(4813, 771)
    assert marienplatz.key == "4813:771"
    assert (marienplatz.south, marienplatz.west) == (48.13, 11.565)
    assert (marienplatz.north, marienplatz.east) == (48.14, 11.58)
    assert cell_of(-33.905, -70.66) == Cell(-3391, -4711)  # floor, not truncation
    # About 1.1 km by 1.1 km at Munich's latitude.
    assert haversine_km((48.13, 11.565), (48.14, 11.565)) == pytest.approx(1.112, abs=0.001)
    assert haversine_km((48.13, 11.565), (48.13, 11.58)) == pytest.approx(1.114, abs=0.002)


def test_point_in_polygon() -> None:
    square = [(11.0, 48.0), (12.0, 48.0), (12.0, 49.0), (11.0, 49.0)]
    assert point_in_polygon(48.5, 11.5, square)
    assert not point_in_polygon(49.5, 11.5, square)
    assert not point_in_polygon(48.5, 12.5, square)
    # A concave L shape: its notch is outside.
    ell = [(0.0, 0.0), (2.0, 0.0), (2.0, 1.0), (1.0, 1.0), (1.0, 2.0), (0.0, 2.0)]
    assert point_in_polygon(0.5, 1.5, ell)
    assert not point_in_polygon(1.5, 1.5, ell)


def _length(
    start: tuple[float, float], stops: list[tuple[float, float]], order: list[int]
) -> float:
    points = [start, *(stops[i] for i in order)]
    return sum(haversine_km(a, b) for a, b in itertools.pairwise(points))


def test_route_visits_every_stop_once_nearest_first() -> None:
    start = (48.10, 11.50)
    stops = [(48.13, 11.50), (48.11, 11.50), (48.20, 11.70), (48.12, 11.50)]
    route = plan_route(start, stops)
    assert [s.index for s in route] == [1, 3, 0, 2]
    assert route[0].leg_km == pytest.approx(1.112, abs=0.001)
    assert route[-1].cumulative_km == pytest.approx(sum(s.leg_km for s in route), abs=0.01)
    assert plan_route(start, []) == []


def test_two_opt_never_lengthens_nearest_neighbour_and_removes_crossings() -> None:
    rng = random.Random(4)
    for _ in range(30):
        stops = [(48.1 + rng.random() * 0.1, 11.5 + rng.random() * 0.15) for _ in range(25)]
        start = (48.15, 11.575)
        greedy = [s.index for s in plan_route(start, stops, improve=False)]
        improved = [s.index for s in plan_route(start, stops)]
        assert sorted(improved) == list(range(len(stops)))
        assert _length(start, stops, improved) <= _length(start, stops, greedy) + 1e-9
    # In a small area lat/lon is a plane (up to scale): a 2-opt route never crosses itself,
    # while nearest neighbour routes often do.
    greedy_crossed = 0
    for _ in range(30):
        stops = [(rng.random(), rng.random()) for _ in range(12)]
        start = (0.5, 0.5)
        greedy = [s.index for s in plan_route(start, stops, improve=False)]
        improved = [s.index for s in plan_route(start, stops)]
        greedy_crossed += _crossings(start, stops, greedy) > 0
        assert _crossings(start, stops, improved) == 0
    assert greedy_crossed > 0


def _crossings(
    start: tuple[float, float], stops: list[tuple[float, float]], order: list[int]
) -> int:
    points = [start, *(stops[i] for i in order)]
    legs = list(itertools.pairwise(points))

    def side(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    count = 0
    for i, (p1, p2) in enumerate(legs):
        for q1, q2 in legs[i + 2 :]:
            if side(p1, p2, q1) * side(p1, p2, q2) < 0 and side(q1, q2, p1) * side(q1, q2, p2) < 0:
                count += 1
    return count


def test_the_same_input_gives_the_same_route() -> None:
    stops = [(48.1, 11.5), (48.1, 11.5), (48.2, 11.6)]
    assert plan_route((48.0, 11.0), stops) == plan_route((48.0, 11.0), stops)


def test_wear_rates_per_1000_km_and_combining() -> None:
    one = wear_row("A", "m", cars=1, trips=3, km=250.0, counts=WearCounts(door_ajar=2))
    two = wear_row("B", "m", cars=1, trips=1, km=0.0, counts=WearCounts(command_failed=1))
    other = wear_row("C", "n", cars=1, trips=2, km=750.0, counts=WearCounts(low_voltage=3))
    assert one.per_1000_km["door_ajar"] == 8.0
    assert one.per_1000_km["low_voltage"] == 0.0
    assert two.per_1000_km["command_failed"] is None  # no distance: no rate
    per_model = combine_wear([one, two, other], by_model=True)
    assert [(r.key, r.cars, r.trips, r.km) for r in per_model] == [
        ("m", 2, 4, 250.0),
        ("n", 1, 2, 750.0),
    ]
    assert per_model[0].counts.command_failed == 1
    assert per_model[0].per_1000_km["command_failed"] == 4.0
    (fleet,) = combine_wear([one, two, other], by_model=False)
    assert (fleet.key, fleet.km, fleet.per_1000_km["low_voltage"]) == ("fleet", 1000.0, 3.0)


def test_makers_csv_rows_per_car_then_all() -> None:
    b = wear_row("VINB", "m", cars=1, trips=1, km=10.0, counts=WearCounts(harsh_braking=1))
    a = wear_row("VINA", "m", cars=1, trips=2, km=30.0, counts=WearCounts())
    (total,) = combine_wear([a, b], by_model=True)
    lines = render_csv([b, a], total).splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[1].startswith("VINA,m,2,30.000,0,0,0,")
    assert lines[2].startswith("VINB,m,1,10.000,0,0,1,")
    assert lines[3].startswith("ALL,m,3,40.000,0,0,1,")
    assert lines[3].split(",")[CSV_COLUMNS.index("harsh_braking_per_1000_km")] == "25.000"


def test_week_profiles_and_durations() -> None:
    week = [
        {"day": 1, "hour": 8, "rented_s": 1800.0, "idle_s": 1800.0, "trips": 2},
        {"day": 2, "hour": 8, "rented_s": 0.0, "idle_s": 3600.0, "trips": 0},
        {"day": 2, "hour": 9, "rented_s": 3600.0, "idle_s": 0.0, "trips": 1},
    ]
    profiles = _profiles(week)
    by_hour = {c.hour: c for c in profiles["by_hour"]}
    assert by_hour[8].rented_share == 0.25
    assert by_hour[8].trips == 2
    assert by_hour[9].rented_share == 1.0
    assert by_hour[10].rented_share is None
    by_day = {c.day: c for c in profiles["by_weekday"]}
    assert by_day[2].rented_share == 0.5
    assert len(profiles["week"]) == 168
    assert _duration(600) == "10 min"
    assert _duration(3 * 3600) == "3 h"
    assert _duration(3 * 86400) == "3.0 days"


def test_track_downsampling_keeps_both_ends() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    points = [
        TrackPoint(time=t0 + timedelta(seconds=i), lat=48.0 + i / 1e4, lon=11.0) for i in range(101)
    ]
    assert _downsample(points, 200) == points
    short = _downsample(points, 11)
    assert len(short) == 11
    assert (short[0], short[-1]) == (points[0], points[-1])
    assert short[5] == points[50]


def test_a_range_splits_into_whole_days_and_end_hours() -> None:
    from gateway.insights.store import _split_days  # noqa: PLC0415  # private helper

    day = datetime(2025, 3, 3, tzinfo=UTC)
    hour = timedelta(hours=1)
    now = day + timedelta(days=10)
    # Inside one day: every hour from the hourly table.
    inside = _split_days(day + 2 * hour, day + 5 * hour, now)
    assert inside["day_lo"] == inside["day_hi"]
    assert (inside["h1_lo"], inside["h1_hi"]) == (day + 2 * hour, day + 5 * hour)
    assert inside["h2_lo"] == inside["h2_hi"]
    # Across days: the whole days in the middle, the hours at the ends.
    across = _split_days(day + 20 * hour, day + timedelta(days=3, hours=4), now)
    assert (across["day_lo"], across["day_hi"]) == (
        day + timedelta(days=1),
        day + timedelta(days=3),
    )
    assert (across["h1_lo"], across["h1_hi"]) == (day + 20 * hour, day + timedelta(days=1))
    assert (across["h2_lo"], across["h2_hi"]) == (
        day + timedelta(days=3),
        day + timedelta(days=3, hours=4),
    )
    # Up to now: today comes from its daily row too (it holds the day so far).
    live = _split_days(day, now + 3 * hour, now + 2 * hour + timedelta(minutes=30))
    assert (live["day_lo"], live["day_hi"]) == (day, now + timedelta(days=1))
    assert live["h1_lo"] == live["h1_hi"]
    assert live["h2_lo"] == live["h2_hi"]
