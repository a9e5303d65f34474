"""Canonical vehicle signals, named on the wire by short keys mapped to COVESA VSS.

`Signals` is the single source: each field's metadata names its VSS path and
unit, and `SIGNAL_CATALOG` (used by the docs, the storage and the car's signal
profiles) is derived from it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from pydantic import Field, model_validator

from schemas.base import ProtocolModel

__all__ = ["SIGNAL_CATALOG", "SIGNAL_NAMES", "SignalSpec", "Signals"]


def _signal(
    vss: str,
    unit: str,
    description: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    return Field(
        default=None,
        description=description,
        json_schema_extra={"x-vss": vss, "x-unit": unit},
        ge=ge,
        le=le,
        lt=lt,
    )


class Signals(ProtocolModel):
    """The values one sample carries; every field is optional, at least one is present."""

    lat: float | None = _signal(
        "Vehicle.CurrentLocation.Latitude", "degrees", "WGS 84 latitude.", ge=-90, le=90
    )
    lon: float | None = _signal(
        "Vehicle.CurrentLocation.Longitude", "degrees", "WGS 84 longitude.", ge=-180, le=180
    )
    heading: float | None = _signal(
        "Vehicle.CurrentLocation.Heading",
        "degrees",
        "Direction of travel, clockwise from true north.",
        ge=0,
        lt=360,
    )
    speed: float | None = _signal("Vehicle.Speed", "km/h", "Vehicle speed.", ge=0, le=400)
    fuel: float | None = _signal(
        "Vehicle.Powertrain.FuelSystem.RelativeLevel", "percent", "Fuel tank level.", ge=0, le=100
    )
    soc: float | None = _signal(
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
        "percent",
        "Traction battery state of charge (electric cars).",
        ge=0,
        le=100,
    )
    odometer: float | None = _signal(
        "Vehicle.TraveledDistance", "km", "Odometer reading.", ge=0, le=5_000_000
    )
    batt_v: float | None = _signal(
        "Vehicle.LowVoltageBattery.CurrentVoltage",
        "V",
        "12 V battery voltage.",
        ge=0,
        le=60,
    )
    ignition: bool | None = _signal(
        "Vehicle.LowVoltageSystemState",
        "ON/START -> true",
        "Ignition on (VSS LowVoltageSystemState ON or START) or off.",
    )
    locked: bool | None = _signal(
        "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked", "bool", "Central locking engaged."
    )
    door_fl_open: bool | None = _signal(
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", "bool", "Front left door open."
    )
    door_fr_open: bool | None = _signal(
        "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen", "bool", "Front right door open."
    )
    door_rl_open: bool | None = _signal(
        "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen", "bool", "Rear left door open."
    )
    door_rr_open: bool | None = _signal(
        "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen", "bool", "Rear right door open."
    )
    trunk_open: bool | None = _signal("Vehicle.Body.Trunk.Rear.IsOpen", "bool", "Trunk open.")

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        # Runs for every sample the gateway receives: one C-level pass over the values.
        if _signal_values(self).count(None) == len(SIGNAL_NAMES):
            raise ValueError("a sample carries at least one signal")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together or not at all")
        return self

    def present(self) -> dict[str, float | bool]:
        """The signals this sample carries, by wire name."""
        return {
            name: value
            for name, value in zip(SIGNAL_NAMES, _signal_values(self), strict=True)
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One canonical signal: wire name, VSS path, unit, type and accepted range."""

    name: str
    vss_path: str
    unit: str
    type: type
    description: str
    minimum: float | None
    maximum: float | None
    maximum_exclusive: bool = False  # True when the value must stay below `maximum` (heading < 360)


def _catalog() -> tuple[SignalSpec, ...]:
    specs = []
    for name, field in Signals.model_fields.items():
        extra = field.json_schema_extra
        assert isinstance(extra, dict)
        minimum = maximum = None
        maximum_exclusive = False
        for bound in field.metadata:
            minimum = getattr(bound, "ge", minimum)
            if hasattr(bound, "lt"):
                maximum, maximum_exclusive = bound.lt, True
            maximum = getattr(bound, "le", maximum)
        value_type = bool if field.annotation == (bool | None) else float
        specs.append(
            SignalSpec(
                name=name,
                vss_path=str(extra["x-vss"]),
                unit=str(extra["x-unit"]),
                type=value_type,
                description=field.description or "",
                minimum=minimum,
                maximum=maximum,
                maximum_exclusive=maximum_exclusive,
            )
        )
    return tuple(specs)


SIGNAL_NAMES: tuple[str, ...] = tuple(Signals.model_fields)
# Reads all signals in one C call: the ingest hot path does this for every sample.
_signal_values: Callable[[Signals], tuple[float | bool | None, ...]] = operator.attrgetter(
    *SIGNAL_NAMES
)
SIGNAL_CATALOG: tuple[SignalSpec, ...] = _catalog()
