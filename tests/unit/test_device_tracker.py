"""The unit's view of the car: change events, thresholds, out-of-range rate limit, snapshot."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from device_sim.codec import Decoded, OutOfRange
from device_sim.tracker import SignalTracker
from schemas.events import (
    Door,
    DoorEvent,
    IgnitionEvent,
    LockEvent,
    LockSource,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
)
from schemas.signals import Signals

pytestmark = pytest.mark.unit


def _apply(tracker: SignalTracker, now_ms: int = 0, **values: float | bool) -> list[object]:
    drafts = tracker.apply(Decoded(values=dict(values)), now_ms)
    return [draft.build(vin="WBA12345678901234", boot_id="b", seq=i, ts=1_800_000_000_000)
            for i, draft in enumerate(drafts)]  # fmt: skip


def test_first_values_are_no_news_changes_are() -> None:
    tracker = SignalTracker()
    assert _apply(tracker, door_fl_open=False, ignition=False, locked=True) == []
    events = _apply(tracker, door_fl_open=True, ignition=True, locked=False)
    assert [type(e) for e in events] == [DoorEvent, IgnitionEvent, LockEvent]
    door, ignition, lock = events
    assert isinstance(door, DoorEvent)
    assert (door.type, door.door) == ("door_opened", Door.FRONT_LEFT)
    assert isinstance(ignition, IgnitionEvent)
    assert ignition.type == "ignition_on"
    assert isinstance(lock, LockEvent)
    assert (lock.type, lock.source) == ("unlocked", LockSource.UNKNOWN)
    assert tracker.state_changed
    assert _apply(tracker, door_fl_open=True) == []


def test_a_commanded_lock_names_its_command() -> None:
    tracker = SignalTracker()
    _apply(tracker, locked=False)
    command_id = uuid.uuid4()
    tracker.expect_lock(locked=True, command_id=command_id)
    (event,) = _apply(tracker, locked=True)
    assert isinstance(event, LockEvent)
    assert (event.source, event.command_id) == (LockSource.COMMAND, command_id)
    (later,) = _apply(tracker, locked=False)
    assert isinstance(later, LockEvent)
    assert later.source is LockSource.UNKNOWN


def test_low_fuel_and_voltage_warn_once_until_rearmed() -> None:
    tracker = SignalTracker()
    assert _apply(tracker, fuel=40.0, batt_v=12.6) == []
    (low,) = _apply(tracker, fuel=14.5)
    assert isinstance(low, LowFuelEvent)
    assert low.level_pct == 14.5
    assert _apply(tracker, fuel=13.0) == []
    assert _apply(tracker, fuel=16.0) == []  # hovering near the line: no new warning
    _apply(tracker, fuel=95.0)  # refuelled: armed again
    assert len(_apply(tracker, fuel=10.0)) == 1
    (voltage,) = _apply(tracker, batt_v=11.5)
    assert isinstance(voltage, LowVoltageEvent)


def test_out_of_range_events_are_rate_limited_but_counted() -> None:
    tracker = SignalTracker()
    bad = Decoded(out_of_range=[OutOfRange("speed", 999.0, 0.0, 350.0)])
    first = tracker.apply(bad, 1_000)
    assert [d.model for d in first] == [SignalOutOfRangeEvent]
    assert tracker.apply(bad, 2_000) == []
    assert len(tracker.apply(bad, 61_000)) == 1
    assert tracker.out_of_range_total == 3
    assert "speed" not in tracker.values


def test_snapshot_and_moving() -> None:
    tracker = SignalTracker()
    assert tracker.snapshot() is None
    _apply(tracker, lat=48.1, speed=0.0, ignition=False)
    snapshot = tracker.snapshot()
    assert snapshot is not None
    assert snapshot.present() == {"speed": 0.0, "ignition": False}  # lat without lon is held back
    assert not tracker.moving
    _apply(tracker, lon=11.5, ignition=True)
    assert tracker.moving
    snapshot = tracker.snapshot()
    assert snapshot is not None
    assert snapshot.lat == 48.1
    # Built without validating again (hot path): it is what validation would have built.
    assert Signals.model_validate(snapshot.present()) == snapshot
    assert Signals.model_validate_json(snapshot.model_dump_json()) == snapshot


async def test_wait_for_a_state() -> None:
    tracker = SignalTracker()
    waiting = asyncio.create_task(tracker.wait_for(lambda t: t.values.get("locked") is True, 5))
    await asyncio.sleep(0)
    _apply(tracker, locked=True)
    assert await waiting
    assert not await tracker.wait_for(lambda t: t.values.get("locked") is False, 0.01)
