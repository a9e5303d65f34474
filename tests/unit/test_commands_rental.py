"""The end-of-rental check (pure)."""

from __future__ import annotations

from gateway.commands.rental import RentalCondition, check_rental_end, inside_polygon

# A rough box around Munich's centre, (longitude, latitude).
MUNICH = [(11.45, 48.09), (11.70, 48.09), (11.70, 48.20), (11.45, 48.20)]
AREAS = {"munich": MUNICH}
PARKED = {
    "lat": 48.137154,
    "lon": 11.576124,
    "locked": True,
    "ignition": False,
    "door_fl_open": False,
    "door_fr_open": False,
    "door_rl_open": False,
    "door_rr_open": False,
    "trunk_open": False,
}


def test_polygon() -> None:
    assert inside_polygon((11.57, 48.13), MUNICH)
    assert not inside_polygon((11.30, 48.13), MUNICH)
    triangle = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)]
    assert inside_polygon((1.0, 1.0), triangle)
    assert not inside_polygon((6.0, 6.0), triangle)


def test_a_parked_locked_car_in_the_city_may_end() -> None:
    report = check_rental_end("WBAUF11080E123456", PARKED, AREAS)
    assert report.may_end
    assert report.failed == ()
    assert report.area == "munich"


def test_every_failing_condition_is_named() -> None:
    state = {
        **PARKED,
        "door_fl_open": True,
        "door_rr_open": None,
        "locked": False,
        "ignition": True,
        "lon": 11.0,
    }
    report = check_rental_end("WBAUF11080E123456", state, AREAS)
    assert not report.may_end
    failed = {f.condition: f.detail for f in report.failed}
    assert set(failed) == {
        RentalCondition.DOORS_CLOSED,
        RentalCondition.LOCKED,
        RentalCondition.IGNITION_OFF,
        RentalCondition.INSIDE_OPERATING_AREA,
    }
    assert failed[RentalCondition.DOORS_CLOSED] == (
        "front left door open; rear right door not reported"
    )
    assert "outside every operating area (munich)" in failed[RentalCondition.INSIDE_OPERATING_AREA]


def test_a_car_that_never_reported_may_not_end() -> None:
    report = check_rental_end("WBAUF11080E123456", None, AREAS)
    assert not report.may_end
    assert len(report.failed) == 5
    assert report.as_dict()["failed"][-1] == {
        "condition": "inside_operating_area",
        "detail": "no position reported",
    }
