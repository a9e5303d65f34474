"""The in-car unit's view of the car: latest signal values, and the events their changes make.

Pure logic (no I/O): decoded frames go in, event drafts come out. A door opening, the
ignition, the central locking, low fuel and a low 12 V battery become events; values
outside their range become (rate-limited) `signal_out_of_range` events.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from device_sim.codec import Decoded, WireValue
from schemas.events import (
    BacklogOverflowEvent,
    Door,
    DoorEvent,
    IgnitionEvent,
    LockEvent,
    LockSource,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
)
from schemas.signals import SIGNAL_CATALOG, SIGNAL_NAMES, Signals

__all__ = ["EventDraft", "SignalTracker", "TrackerThresholds"]

_DOORS: dict[str, Door] = {
    "door_fl_open": Door.FRONT_LEFT,
    "door_fr_open": Door.FRONT_RIGHT,
    "door_rl_open": Door.REAR_LEFT,
    "door_rr_open": Door.REAR_RIGHT,
    "trunk_open": Door.TRUNK,
}
# Changes that are news at once: the unit sends a fresh sample right after their event.
_STATE_SIGNALS = frozenset({*_DOORS, "ignition", "locked"})
_MOVING_KMH = 0.5
_POSITION = frozenset({"lat", "lon"})
# |x| in [1e-4, 1e16) or 0: Python's repr(x) and pydantic's JSON write a float the same way
# (outside, one says 1e-05 and the other 0.00001 or 1e-5).
_PLAIN_MIN = 1e-4
_PLAIN_MAX = 1e16
# Each float signal's accepted range (low, high, high excluded): a value outside it goes through
# the model, which refuses it, so the hot path never writes what `snapshot()` would not.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    spec.name: (
        spec.minimum if spec.minimum is not None else -math.inf,
        spec.maximum if spec.maximum is not None else math.inf,
        spec.maximum_exclusive,
    )
    for spec in SIGNAL_CATALOG
}


def _within(name: str, value: float) -> bool:
    low, high, high_excluded = _BOUNDS[name]
    return low <= value and (value < high if high_excluded else value <= high)


EventModel = (
    type[DoorEvent]
    | type[IgnitionEvent]
    | type[LockEvent]
    | type[LowFuelEvent]
    | type[LowVoltageEvent]
    | type[SignalOutOfRangeEvent]
    | type[BacklogOverflowEvent]
)


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event without its envelope (VIN, boot id, seq, time), which the unit adds."""

    model: EventModel
    fields: dict[str, Any]

    def build(self, *, vin: str, boot_id: str, seq: int, ts: int) -> Any:
        """The event message (one of schemas.events' models)."""
        return self.model(v=1, vin=vin, boot_id=boot_id, seq=seq, ts=ts, **self.fields)


@dataclass(frozen=True, slots=True)
class TrackerThresholds:
    """Warning thresholds, with hysteresis so a level hovering at the line warns once."""

    low_fuel_pct: float = 15.0
    low_fuel_rearm_pct: float = 20.0
    low_voltage_v: float = 11.8
    low_voltage_rearm_v: float = 12.2
    out_of_range_interval_ms: int = 60_000  # one event per signal per interval; all counted


@dataclass(slots=True)
class _LockIntent:
    locked: bool
    command_id: UUID


@dataclass(slots=True)
class _Waiter:
    predicate: Callable[[SignalTracker], bool]
    future: asyncio.Future[None]


@dataclass(slots=True)
class SignalTracker:
    """Latest values of the car's signals and the events their changes make."""

    thresholds: TrackerThresholds = field(default_factory=TrackerThresholds)
    values: dict[str, WireValue] = field(default_factory=dict)
    immobilized: bool | None = None
    state_changed: bool = False  # a door, the ignition or the lock changed since the last sample
    out_of_range_total: int = 0
    _fuel_armed: bool = True
    _voltage_armed: bool = True
    _last_out_of_range_ms: dict[str, int] = field(default_factory=dict)
    _lock_intent: _LockIntent | None = None
    _waiters: list[_Waiter] = field(default_factory=list)

    @property
    def moving(self) -> bool:
        """Driving (ignition on or rolling): position is reported often."""
        speed = self.values.get("speed")
        return bool(self.values.get("ignition")) or (
            isinstance(speed, float) and speed > _MOVING_KMH
        )

    def expect_lock(self, *, locked: bool, command_id: UUID) -> None:
        """The next lock change to `locked` is caused by this command (for the event's source)."""
        self._lock_intent = _LockIntent(locked, command_id)

    def clear_lock_intent(self) -> None:
        self._lock_intent = None

    def apply(self, decoded: Decoded, now_ms: int) -> list[EventDraft]:
        """Take one decoded frame; return the events it causes, in order."""
        drafts: list[EventDraft] = []
        values = self.values
        for wire, value in decoded.values.items():
            old = values.get(wire)
            values[wire] = value
            if old is None or old == value:
                self._check_levels(wire, value, drafts)
                continue
            if wire in _STATE_SIGNALS:
                self.state_changed = True
            door = _DOORS.get(wire)
            if door is not None:
                kind = "door_opened" if value else "door_closed"
                drafts.append(EventDraft(DoorEvent, {"type": kind, "door": door}))
            elif wire == "ignition":
                kind = "ignition_on" if value else "ignition_off"
                drafts.append(EventDraft(IgnitionEvent, {"type": kind}))
            elif wire == "locked":
                drafts.append(self._lock_event(bool(value)))
            self._check_levels(wire, value, drafts)
        if decoded.immobilized is not None:
            self.immobilized = decoded.immobilized
        for out in decoded.out_of_range:
            self.out_of_range_total += 1
            last = self._last_out_of_range_ms.get(out.signal)
            if last is None or now_ms - last >= self.thresholds.out_of_range_interval_ms:
                self._last_out_of_range_ms[out.signal] = now_ms
                drafts.append(
                    EventDraft(
                        SignalOutOfRangeEvent,
                        {
                            "type": "signal_out_of_range",
                            "signal": out.signal,
                            "value": out.value,
                            "minimum": out.minimum,
                            "maximum": out.maximum,
                        },
                    )
                )
        if self._waiters:
            self._wake_waiters()
        return drafts

    def _lock_event(self, locked: bool) -> EventDraft:
        intent = self._lock_intent
        fields_: dict[str, Any] = {"type": "locked" if locked else "unlocked"}
        if intent is not None and intent.locked == locked:
            fields_["source"] = LockSource.COMMAND
            fields_["command_id"] = intent.command_id
            self._lock_intent = None
        else:
            fields_["source"] = LockSource.UNKNOWN
        return EventDraft(LockEvent, fields_)

    def _check_levels(self, wire: str, value: WireValue, drafts: list[EventDraft]) -> None:
        limits = self.thresholds
        if wire in ("fuel", "soc") and isinstance(value, float):
            if self._fuel_armed and value < limits.low_fuel_pct:
                self._fuel_armed = False
                drafts.append(EventDraft(LowFuelEvent, {"type": "low_fuel", "level_pct": value}))
            elif value >= limits.low_fuel_rearm_pct:
                self._fuel_armed = True
        elif wire == "batt_v" and isinstance(value, float):
            if self._voltage_armed and value < limits.low_voltage_v:
                self._voltage_armed = False
                drafts.append(
                    EventDraft(LowVoltageEvent, {"type": "low_voltage", "voltage_v": value})
                )
            elif value >= limits.low_voltage_rearm_v:
                self._voltage_armed = True

    def snapshot(self) -> Signals | None:
        """Every known signal as one sample's signals (None before the first frame)."""
        present = dict(self.values)
        if ("lat" in present) != ("lon" in present):
            present.pop("lat", None)
            present.pop("lon", None)
        if not present:
            return None
        try:
            return Signals.model_validate(present)
        except ValidationError:
            # Cannot happen for decoded values (the decoder range-checks them); never crash.
            return None

    def signals_json(self) -> str | None:
        """The snapshot's signals as JSON, byte for byte what
        `snapshot().model_dump_json(exclude_none=True)` writes (None before the first frame).

        Written here for the fleet's hot path (a sample per driving car per second): floats in
        the range where Python's repr and pydantic's JSON agree are written directly; anything
        else goes through the model. A unit test holds both to the same output.
        """
        values = self.values
        position = "lat" in values and "lon" in values
        parts: list[str] = []
        for name in SIGNAL_NAMES:
            value = values.get(name)
            if value is None or (not position and name in _POSITION):
                continue
            if value is True:
                parts.append(f'"{name}":true')
            elif value is False:
                parts.append(f'"{name}":false')
            elif (
                type(value) is float
                and (value == 0 or _PLAIN_MIN <= abs(value) < _PLAIN_MAX)
                and _within(name, value)
            ):
                parts.append(f'"{name}":{value!r}')
            else:
                snapshot = self.snapshot()
                return None if snapshot is None else snapshot.model_dump_json(exclude_none=True)
        if not parts:
            return None
        return "{" + ",".join(parts) + "}"

    # -- waiting for a state (command read-back) ----------------------------------------------

    async def wait_for(self, predicate: Callable[[SignalTracker], bool], timeout_s: float) -> bool:
        """Wait until `predicate(self)` holds (now or after a frame); False on timeout."""
        if predicate(self):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(predicate, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def _wake_waiters(self) -> None:
        for waiter in tuple(self._waiters):
            if not waiter.future.done() and waiter.predicate(self):
                waiter.future.set_result(None)
                self._waiters.remove(waiter)
