"""Events: one message per event, told apart by `type`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import (
    EVENT_ADAPTER,
    BacklogOverflowEvent,
    Door,
    DoorEvent,
    EventType,
    IgnitionEvent,
    LockEvent,
    LockSource,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
)

pytestmark = pytest.mark.unit

NOW = 1_748_851_200_000
COMMON: dict[str, Any] = {
    "v": 1,
    "vin": "WBAUF11080E123456",
    "boot_id": "b00t",
    "seq": 9,
    "ts": NOW,
}

# Each event type with the least it needs, and the model it becomes.
MINIMAL: dict[EventType, tuple[dict[str, Any], type[BaseModel]]] = {
    EventType.DOOR_OPENED: ({"door": "fl"}, DoorEvent),
    EventType.DOOR_CLOSED: ({"door": "trunk"}, DoorEvent),
    EventType.IGNITION_ON: ({}, IgnitionEvent),
    EventType.IGNITION_OFF: ({}, IgnitionEvent),
    EventType.LOCKED: ({}, LockEvent),
    EventType.UNLOCKED: ({}, LockEvent),
    EventType.LOW_FUEL: ({"level_pct": 9.5}, LowFuelEvent),
    EventType.LOW_VOLTAGE: ({"voltage_v": 11.4}, LowVoltageEvent),
    EventType.SIGNAL_OUT_OF_RANGE: ({"signal": "speed", "value": 655.35}, SignalOutOfRangeEvent),
    EventType.BACKLOG_OVERFLOW: ({"dropped": 1}, BacklogOverflowEvent),
}


def parse(document: dict[str, Any]) -> BaseModel:
    return EVENT_ADAPTER.validate_json(json.dumps(document))


def event(event_type: EventType, **changes: Any) -> dict[str, Any]:
    return COMMON | {"type": event_type.value} | MINIMAL[event_type][0] | changes


def test_every_event_type_has_a_model() -> None:
    assert set(MINIMAL) == set(EventType)


@pytest.mark.parametrize("event_type", list(EventType), ids=[t.value for t in EventType])
def test_each_type_becomes_its_model(event_type: EventType) -> None:
    parsed = parse(event(event_type))
    assert type(parsed) is MINIMAL[event_type][1]
    assert parsed.model_dump(mode="json")["type"] == event_type.value


@pytest.mark.parametrize("event_type", list(EventType), ids=[t.value for t in EventType])
@pytest.mark.parametrize("field", ["v", "vin", "boot_id", "seq", "ts"])
def test_every_event_carries_the_common_fields(event_type: EventType, field: str) -> None:
    document = {k: v for k, v in event(event_type).items() if k != field}
    with pytest.raises(ValidationError, match=field):
        parse(document)


@pytest.mark.parametrize("event_type", list(EventType), ids=[t.value for t in EventType])
def test_fields_of_another_type_are_refused(event_type: EventType) -> None:
    foreign = "dropped" if event_type is not EventType.BACKLOG_OVERFLOW else "door"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse(event(event_type, **{foreign: 1}))


@given(st.text(max_size=30).filter(lambda t: t not in {e.value for e in EventType}))
def test_an_unknown_type_is_refused(event_type: str) -> None:
    with pytest.raises(ValidationError):
        parse(COMMON | {"type": event_type})


@pytest.mark.parametrize("door", list(Door))
def test_doors(door: Door) -> None:
    parsed = parse(event(EventType.DOOR_OPENED, door=door.value))
    assert isinstance(parsed, DoorEvent)
    assert parsed.door is door
    with pytest.raises(ValidationError, match="door"):
        parse(event(EventType.DOOR_OPENED, door="hood"))


def test_a_lock_event_defaults_to_an_unknown_source() -> None:
    parsed = parse(event(EventType.LOCKED))
    assert isinstance(parsed, LockEvent)
    assert parsed.source is LockSource.UNKNOWN
    assert parsed.command_id is None


def test_a_lock_event_names_its_command() -> None:
    command_id = "0d9f6c4e-2b71-4f3a-9a8e-5c1b7d2e4f60"
    parsed = parse(event(EventType.UNLOCKED, source="command", command_id=command_id))
    assert isinstance(parsed, LockEvent)
    assert str(parsed.command_id) == command_id
    with pytest.raises(ValidationError, match="command_id"):
        parse(event(EventType.UNLOCKED, source="command", command_id="42"))


@given(st.floats(0, 100))
def test_low_fuel_level_in_range(level: float) -> None:
    parse(event(EventType.LOW_FUEL, level_pct=level))


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        (EventType.LOW_FUEL, "level_pct", -0.1),
        (EventType.LOW_FUEL, "level_pct", 100.1),
        (EventType.LOW_VOLTAGE, "voltage_v", -1),
        (EventType.LOW_VOLTAGE, "voltage_v", 60.5),
        (EventType.BACKLOG_OVERFLOW, "dropped", 0),
        (EventType.BACKLOG_OVERFLOW, "dropped", 1.5),
        (EventType.BACKLOG_OVERFLOW, "oldest_dropped_ts", 5),
        (EventType.SIGNAL_OUT_OF_RANGE, "signal", ""),
        (EventType.SIGNAL_OUT_OF_RANGE, "signal", "x" * 129),
        (EventType.SIGNAL_OUT_OF_RANGE, "signal", "speed\r\n"),
        (EventType.SIGNAL_OUT_OF_RANGE, "value", "655.35"),
    ],
)
def test_event_fields_are_checked(event_type: EventType, field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        parse(event(event_type, **{field: value}))


def test_a_signal_out_of_range_may_report_its_bounds() -> None:
    parsed = parse(event(EventType.SIGNAL_OUT_OF_RANGE, minimum=0, maximum=400))
    assert isinstance(parsed, SignalOutOfRangeEvent)
    assert (parsed.minimum, parsed.maximum) == (0, 400)


def test_an_out_of_range_value_must_still_be_finite() -> None:
    text = json.dumps(event(EventType.SIGNAL_OUT_OF_RANGE)).replace("655.35", "NaN")
    with pytest.raises(ValidationError, match="finite"):
        EVENT_ADAPTER.validate_json(text)
