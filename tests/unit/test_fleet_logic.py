"""Pure pieces of the fleet API: alerts, bucket widths, cursors, bounding boxes, feed rows,
and the OpenAPI conventions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.api.openapi import VIN_PATTERN, add_conventions
from gateway.fleet import ALERT_KINDS, alerts_for
from gateway.fleet.alerts import alert_message
from gateway.fleet.feed import FEED_FIELDS, compact_row
from gateway.fleet.models import BoundingBox
from gateway.fleet.store import (
    NICE_BUCKETS_S,
    CursorError,
    choose_bucket_s,
    decode_cursor,
    encode_cursor,
)

pytestmark = pytest.mark.unit

HEALTHY: dict[str, Any] = {
    "online": True,
    "connected": True,
    "stale": False,
    "fuel": 50.0,
    "soc": None,
    "batt_v": 12.6,
    "ignition": False,
    "speed": 0.0,
    "door_fl_open": False,
    "trunk_open": False,
}


def test_a_healthy_parked_car_raises_no_alert() -> None:
    assert alerts_for(HEALTHY) == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"online": False}, ("offline",)),
        ({"stale": True}, ("offline",)),
        ({"fuel": 14.9}, ("low_fuel",)),
        ({"fuel": 15.0}, ()),
        ({"fuel": None, "soc": 10.0}, ("low_charge",)),
        ({"batt_v": 11.7}, ("low_battery",)),
        ({"door_fl_open": True}, ("door_open_parked",)),
        ({"trunk_open": True, "speed": None}, ("door_open_parked",)),
        # A door open while driving or with the ignition on is a renter getting in or out.
        ({"door_fl_open": True, "ignition": True}, ()),
        ({"door_fl_open": True, "speed": 20.0}, ()),
        (
            {"online": False, "fuel": 5.0, "door_fl_open": True},
            ("offline", "door_open_parked", "low_fuel"),
        ),
    ],
)
def test_alerts(change: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert alerts_for(HEALTHY | change) == expected


def test_missing_values_raise_nothing_but_offline() -> None:
    assert alerts_for({"online": True}) == ()
    assert alerts_for({}) == ("offline",)


def test_every_alert_has_a_message() -> None:
    state = HEALTHY | {"fuel": 9.0, "soc": 8.0, "batt_v": 11.0, "door_fl_open": True}
    for kind in ALERT_KINDS:
        assert alert_message(kind, state)
    assert alert_message("door_open_parked", state) == "front left door open while parked"
    assert "silent" in alert_message("offline", HEALTHY | {"online": False, "stale": True})
    assert "gone" in alert_message("offline", HEALTHY | {"online": False, "connected": False})


@pytest.mark.parametrize(
    ("range_s", "max_points", "expected"),
    [(600, 1000, 1), (600, 50, 15), (3600, 1000, 5), (86400, 1000, 120), (31 * 86400, 10, 345600)],
)
def test_bucket_width_fits_the_point_budget(range_s: float, max_points: int, expected: int) -> None:
    width = choose_bucket_s(range_s, max_points)
    assert width == expected
    assert range_s / width <= max_points
    assert width in NICE_BUCKETS_S or width % 86400 == 0


def test_cursors_round_trip_and_refuse_others() -> None:
    cursor = encode_cursor("events", ["2025-01-01T00:00:00+00:00", "VIN", "boot", 7])
    assert decode_cursor("events", cursor, 4) == ["2025-01-01T00:00:00+00:00", "VIN", "boot", 7]
    with pytest.raises(CursorError):
        decode_cursor("vehicles", cursor, 1)
    for damaged in ("not base64!", "e30", cursor[:-3]):
        with pytest.raises(CursorError):
            decode_cursor("events", damaged, 4)


def test_bounding_box() -> None:
    assert BoundingBox.parse("11.5,48.1,11.6,48.2") == BoundingBox(11.5, 48.1, 11.6, 48.2)
    # Corners in any order; beyond the world is clamped.
    assert BoundingBox.parse("11.6,48.2,11.5,48.1") == BoundingBox(11.5, 48.1, 11.6, 48.2)
    assert BoundingBox.parse("-200,-100,200,100") == BoundingBox(-180, -90, 180, 90)
    for bad in ("1,2,3", "a,b,c,d", "nan,1,2,3"):
        with pytest.raises(ValueError, match="bbox"):
            BoundingBox.parse(bad)


def test_feed_rows_are_compact() -> None:
    at = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    row = HEALTHY | {
        "vin": "WBA00000000000001",
        "model": "bmw_e8x",
        "last_seen_at": at,
        "time": at,
        "lat": 48.1234567891,
        "lon": 11.5,
        "heading": 91.4,
        "speed": 12.345,
        "odometer": 1.26,
        "locked": True,
        "door_fr_open": None,
        "door_rl_open": None,
        "door_rr_open": None,
        "fuel": 9.0,
    }
    compact = dict(zip(FEED_FIELDS, compact_row(row), strict=True))
    assert compact["last_seen"] == int(at.timestamp() * 1000)
    assert compact["lat"] == 48.123457
    assert compact["speed"] == 12.3
    assert compact["alerts"] == ["low_fuel"]


def test_openapi_conventions() -> None:
    document: dict[str, Any] = {
        "paths": {
            "/v1/vehicles/{vin}": {
                "get": {
                    "parameters": [{"name": "vin", "in": "path", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "ok"}, "422": {"description": "x"}},
                }
            },
            "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
        }
    }
    add_conventions(document)
    operation = document["paths"]["/v1/vehicles/{vin}"]["get"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert set(operation["responses"]) == {"200", "401", "403", "404", "422", "503"}
    problem = operation["responses"]["404"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert operation["parameters"][0]["schema"]["pattern"] == VIN_PATTERN
    assert "security" not in document["paths"]["/health"]["get"]
