"""What the fleet API answers: cars with their latest state, history, events, dead letters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.fleet.alerts import AlertKind

__all__ = [
    "Alert",
    "BoundingBox",
    "DeadLetter",
    "DeadLetterPage",
    "EventPage",
    "EventRecord",
    "TelemetryHistory",
    "TelemetryPoint",
    "VehicleFilter",
    "VehiclePage",
    "VehicleState",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Alert(_Model):
    """Something about a car that needs a person's attention."""

    kind: AlertKind
    message: str


class VehicleState(_Model):
    """A car: what it is, whether it is connected, and its newest known signals."""

    vin: str
    model: str | None = Field(description="Vehicle profile the car reported at birth.")
    online: bool = Field(description="Connected (birth seen, no last will) and not stale.")
    connected: bool = Field(description="Birth seen and no last will since.")
    stale: bool = Field(description="Connected, yet silent for longer than the stale limit.")
    online_changed_at: datetime | None
    last_seen_at: datetime | None = Field(description="Gateway time of its newest message.")
    capabilities: list[str] = Field(description="Commands the car can execute.")
    firmware: str | None
    time: datetime | None = Field(description="Device time of the newest sample.")
    lat: float | None
    lon: float | None
    heading: float | None = Field(description="Degrees clockwise from north.")
    speed: float | None = Field(description="km/h.")
    fuel: float | None = Field(description="Fuel level, % of the tank.")
    soc: float | None = Field(description="Traction battery state of charge, % (electric cars).")
    odometer: float | None = Field(description="km.")
    batt_v: float | None = Field(description="12 V battery, volts.")
    ignition: bool | None
    locked: bool | None
    door_fl_open: bool | None
    door_fr_open: bool | None
    door_rl_open: bool | None
    door_rr_open: bool | None
    trunk_open: bool | None
    alerts: list[Alert]


class VehiclePage(_Model):
    """One page of cars, in VIN order."""

    items: list[VehicleState]
    total: int = Field(description="Cars matching the filters, over all pages.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """A rectangle in WGS 84 degrees."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @classmethod
    def parse(cls, text: str) -> BoundingBox:
        """`min_lon,min_lat,max_lon,max_lat` (the GeoJSON and OGC order).

        Two opposite corners in either order make the same box; latitudes and longitudes
        beyond the world's are clamped to it (such a box holds no more cars than the world).
        """
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError("bbox must be four numbers: min_lon,min_lat,max_lon,max_lat")
        try:
            min_lon, min_lat, max_lon, max_lat = (float(part) for part in parts)
        except ValueError as exc:
            raise ValueError(f"bbox {text!r} must be four numbers") from exc
        if not all(math.isfinite(v) for v in (min_lon, min_lat, max_lon, max_lat)):
            raise ValueError(f"bbox {text!r} must be four finite numbers")
        lons = sorted(min(max(v, -180.0), 180.0) for v in (min_lon, max_lon))
        lats = sorted(min(max(v, -90.0), 90.0) for v in (min_lat, max_lat))
        return cls(lons[0], lats[0], lons[1], lats[1])


@dataclass(frozen=True, slots=True)
class VehicleFilter:
    """Which cars to list; None means no condition."""

    online: bool | None = None
    locked: bool | None = None
    fuel_below: float | None = None
    bbox: BoundingBox | None = None
    model: str | None = None
    search: str | None = None
    alert: AlertKind | None = None


class TelemetryPoint(_Model):
    """One time bucket of a car's telemetry (one sample when the bucket holds one)."""

    time: datetime = Field(description="Start of the bucket.")
    samples: int
    lat: float | None = Field(description="Last position in the bucket.")
    lon: float | None
    speed_avg: float | None
    speed_max: float | None
    fuel: float | None = Field(description="Last value in the bucket.")
    soc: float | None
    odometer: float | None = Field(description="Highest value in the bucket.")
    batt_v: float | None = Field(description="Lowest value in the bucket.")
    locked: bool | None = Field(description="Last value in the bucket.")
    ignition: bool | None


class TelemetryHistory(_Model):
    """A car's telemetry over a time range, downsampled into buckets."""

    vin: str
    start: datetime = Field(alias="from", serialization_alias="from")
    end: datetime = Field(alias="to", serialization_alias="to")
    bucket_s: int
    storage_mode: str = Field(description="timescaledb (time_bucket) or postgres (date_bin).")
    points: list[TelemetryPoint]

    model_config = ConfigDict(frozen=True, populate_by_name=True)


class EventRecord(_Model):
    """An event a car reported (door, ignition, lock, low fuel, ...)."""

    time: datetime
    vin: str
    type: str
    data: dict[str, Any]
    boot_id: str
    seq: int


class EventPage(_Model):
    items: list[EventRecord]
    next_cursor: str | None


class DeadLetter(_Model):
    """A message the gateway refused, with why."""

    id: int
    received_at: datetime
    topic: str
    vin: str | None
    reason: str
    detail: str | None
    payload_size: int = Field(description="Size of the original payload in bytes.")
    payload_preview: str | None = Field(
        description="The stored (possibly truncated) payload as text, undecodable bytes replaced."
    )
    payload_base64: str | None = Field(description="The stored payload, base64.")


class DeadLetterPage(_Model):
    items: list[DeadLetter]
    next_cursor: str | None
