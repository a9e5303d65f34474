"""May a rental end now? Doors and trunk closed, locked, ignition off, inside an operating area.

Pure: judged from the car's latest known state (`latest_state`) and the configured operating
areas (a polygon per city, vertices as (longitude, latitude) in WGS84). A signal the car has
not reported counts as failing: the safe answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "RentalCondition",
    "RentalEndReport",
    "UnmetCondition",
    "check_rental_end",
    "inside_polygon",
]

Point = tuple[float, float]  # (longitude, latitude)

_DOORS = {
    "door_fl_open": "front left",
    "door_fr_open": "front right",
    "door_rl_open": "rear left",
    "door_rr_open": "rear right",
}


class RentalCondition(StrEnum):
    DOORS_CLOSED = "doors_closed"
    TRUNK_CLOSED = "trunk_closed"
    LOCKED = "locked"
    IGNITION_OFF = "ignition_off"
    INSIDE_OPERATING_AREA = "inside_operating_area"


@dataclass(frozen=True, slots=True)
class UnmetCondition:
    condition: RentalCondition
    detail: str


@dataclass(frozen=True, slots=True)
class RentalEndReport:
    vin: str
    may_end: bool
    failed: tuple[UnmetCondition, ...]
    area: str | None  # the operating area the car is in
    state_time: datetime | None  # device time of the state judged

    def as_dict(self) -> dict[str, Any]:
        return {
            "vin": self.vin,
            "may_end": self.may_end,
            "failed": [{"condition": f.condition.value, "detail": f.detail} for f in self.failed],
            "area": self.area,
            "state_time": self.state_time.isoformat() if self.state_time else None,
        }


def inside_polygon(point: Point, polygon: Sequence[Point]) -> bool:
    """Ray casting; points exactly on an edge may fall either way (areas are not that tight)."""
    x, y = point
    inside = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        xi, yi = polygon[i]
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def check_rental_end(
    vin: str,
    state: Mapping[str, Any] | None,
    areas: Mapping[str, Sequence[Point]],
) -> RentalEndReport:
    """Judge `state` (a `latest_state` row as a mapping, or None if the car never reported)."""
    failed: list[UnmetCondition] = []
    values: Mapping[str, Any] = state or {}
    opened = [name for column, name in _DOORS.items() if values.get(column) is True]
    unknown = [name for column, name in _DOORS.items() if values.get(column) is None]
    if opened or unknown:
        parts = [f"{name} door open" for name in opened]
        parts += [f"{name} door not reported" for name in unknown]
        failed.append(UnmetCondition(RentalCondition.DOORS_CLOSED, "; ".join(parts)))
    trunk = values.get("trunk_open")
    if trunk is not False:
        detail = "trunk open" if trunk else "trunk state not reported"
        failed.append(UnmetCondition(RentalCondition.TRUNK_CLOSED, detail))
    locked = values.get("locked")
    if locked is not True:
        detail = "the car is unlocked" if locked is False else "lock state not reported"
        failed.append(UnmetCondition(RentalCondition.LOCKED, detail))
    ignition = values.get("ignition")
    if ignition is not False:
        detail = "the ignition is on" if ignition else "ignition state not reported"
        failed.append(UnmetCondition(RentalCondition.IGNITION_OFF, detail))
    lat, lon = values.get("lat"), values.get("lon")
    area = None
    if lat is None or lon is None:
        failed.append(UnmetCondition(RentalCondition.INSIDE_OPERATING_AREA, "no position reported"))
    else:
        area = next(
            (name for name, polygon in areas.items() if inside_polygon((lon, lat), polygon)),
            None,
        )
        if area is None:
            where = ", ".join(sorted(areas)) or "none configured"
            failed.append(
                UnmetCondition(
                    RentalCondition.INSIDE_OPERATING_AREA,
                    f"position {lat:.5f}, {lon:.5f} is outside every operating area ({where})",
                )
            )
    return RentalEndReport(
        vin=vin,
        may_end=not failed,
        failed=tuple(failed),
        area=area,
        state_time=values.get("time"),
    )
