"""Which alerts a car's latest state raises, for the console, the terminal and the API.

Pure: a function of one car's state (a row of `vehicles` joined with `latest_state`), so the
API, the live feed and the tests agree on what counts as a problem.

    offline           the car's session is gone (last will) or it has been silent too long (stale)
    low_fuel          fuel below LOW_LEVEL_PCT
    low_charge        traction battery (electric cars) below LOW_LEVEL_PCT
    door_open_parked  a door or the trunk is open while the car is parked (ignition off, standing)
    low_battery       the 12 V battery is below LOW_VOLTAGE_V (the car may not start or wake)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

__all__ = [
    "ALERT_KINDS",
    "DOOR_COLUMNS",
    "LOW_LEVEL_PCT",
    "LOW_VOLTAGE_V",
    "AlertKind",
    "alert_message",
    "alerts_for",
]

AlertKind = Literal["offline", "low_fuel", "low_charge", "door_open_parked", "low_battery"]
ALERT_KINDS: Final[tuple[AlertKind, ...]] = get_args(AlertKind)

LOW_LEVEL_PCT: Final = 15.0
"""Fuel or charge below this share needs the service crew (the simulator's low_fuel event too)."""
LOW_VOLTAGE_V: Final = 11.8
"""A 12 V battery below this may not crank the engine or keep the telematics unit awake."""
PARKED_SPEED_KMH: Final = 1.0
DOOR_COLUMNS: Final = ("door_fl_open", "door_fr_open", "door_rl_open", "door_rr_open", "trunk_open")
_DOOR_NAMES = {
    "door_fl_open": "front left door",
    "door_fr_open": "front right door",
    "door_rl_open": "rear left door",
    "door_rr_open": "rear right door",
    "trunk_open": "trunk",
}


def alerts_for(state: Mapping[str, Any]) -> tuple[AlertKind, ...]:
    """The alerts of one car, in a fixed order (most urgent first).

    Args:
        state: the car's columns by name: online, stale, fuel, soc, batt_v, ignition, speed and
            the door columns; missing or null values raise no alert.
    """
    found: list[AlertKind] = []
    if not state.get("online") or state.get("stale"):
        found.append("offline")
    if _parked(state) and any(state.get(door) for door in DOOR_COLUMNS):
        found.append("door_open_parked")
    fuel, soc = state.get("fuel"), state.get("soc")
    if fuel is not None and fuel < LOW_LEVEL_PCT:
        found.append("low_fuel")
    if soc is not None and soc < LOW_LEVEL_PCT:
        found.append("low_charge")
    volts = state.get("batt_v")
    if volts is not None and volts < LOW_VOLTAGE_V:
        found.append("low_battery")
    return tuple(found)


def _parked(state: Mapping[str, Any]) -> bool:
    # Unknown ignition counts as off: a car that never reported it is not being driven by us.
    speed = state.get("speed")
    return not state.get("ignition") and (speed is None or speed < PARKED_SPEED_KMH)


def alert_message(kind: AlertKind, state: Mapping[str, Any]) -> str:
    """A sentence for a person about one alert of this car."""
    if kind == "offline":
        # `connected` is the session's state; `online` in API rows already excludes stale cars.
        if state.get("connected", state.get("online")) and state.get("stale"):
            return "connected but silent for too long (dead zone?)"
        return "offline: the car's connection is gone"
    if kind == "door_open_parked":
        opened = [_DOOR_NAMES[door] for door in DOOR_COLUMNS if state.get(door)]
        return f"{', '.join(opened)} open while parked"
    if kind == "low_fuel":
        return f"fuel at {state.get('fuel', 0):.0f} % (below {LOW_LEVEL_PCT:.0f} %)"
    if kind == "low_charge":
        return f"charge at {state.get('soc', 0):.0f} % (below {LOW_LEVEL_PCT:.0f} %)"
    return f"12 V battery at {state.get('batt_v', 0):.1f} V (below {LOW_VOLTAGE_V} V)"
