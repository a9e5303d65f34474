"""Events: discrete things that happened in the car, sent at once."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, TypeAdapter

from schemas.base import TEXT_PATTERN, BootId, EpochMillis, ProtocolModel, ProtocolVersion, Seq
from schemas.vin import Vin

__all__ = [
    "EVENT_ADAPTER",
    "BacklogOverflowEvent",
    "Door",
    "DoorEvent",
    "EventMessage",
    "EventType",
    "IgnitionEvent",
    "LockEvent",
    "LockSource",
    "LowFuelEvent",
    "LowVoltageEvent",
    "SignalOutOfRangeEvent",
]


class EventType(StrEnum):
    """Every event type of protocol v1."""

    DOOR_OPENED = "door_opened"
    DOOR_CLOSED = "door_closed"
    IGNITION_ON = "ignition_on"
    IGNITION_OFF = "ignition_off"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    LOW_FUEL = "low_fuel"
    LOW_VOLTAGE = "low_voltage"
    SIGNAL_OUT_OF_RANGE = "signal_out_of_range"
    BACKLOG_OVERFLOW = "backlog_overflow"


class Door(StrEnum):
    FRONT_LEFT = "fl"
    FRONT_RIGHT = "fr"
    REAR_LEFT = "rl"
    REAR_RIGHT = "rr"
    TRUNK = "trunk"


class LockSource(StrEnum):
    """What moved the central locking."""

    COMMAND = "command"  # a remote command from the gateway
    KEY = "key"  # a physical key or key fob
    AUTO = "auto"  # the car's own auto-lock
    UNKNOWN = "unknown"


class _EventBase(ProtocolModel):
    v: ProtocolVersion
    vin: Vin
    boot_id: BootId
    seq: Seq
    ts: EpochMillis


class DoorEvent(_EventBase):
    """A door or the trunk opened or closed."""

    type: Literal["door_opened", "door_closed"]
    door: Door


class IgnitionEvent(_EventBase):
    """The ignition was switched on or off (trip start or end)."""

    type: Literal["ignition_on", "ignition_off"]


class LockEvent(_EventBase):
    """The central locking changed state."""

    type: Literal["locked", "unlocked"]
    source: LockSource = LockSource.UNKNOWN
    command_id: UUID | None = Field(
        default=None, description="The command that caused it, when source is command."
    )


class LowFuelEvent(_EventBase):
    """Fuel or charge fell below the car's warning threshold."""

    type: Literal["low_fuel"]
    level_pct: float = Field(ge=0, le=100)


class LowVoltageEvent(_EventBase):
    """The 12 V battery fell below the car's warning threshold."""

    type: Literal["low_voltage"]
    voltage_v: float = Field(ge=0, le=60)


class SignalOutOfRangeEvent(_EventBase):
    """A CAN signal decoded outside its defined range; the value was not passed on as truth."""

    type: Literal["signal_out_of_range"]
    signal: str = Field(
        min_length=1,
        max_length=128,
        pattern=TEXT_PATTERN,
        description="Wire name or DBC signal name.",
    )
    value: float
    minimum: float | None = None
    maximum: float | None = None


class BacklogOverflowEvent(_EventBase):
    """The car's store-and-forward queue overflowed: `dropped` oldest samples were discarded."""

    type: Literal["backlog_overflow"]
    dropped: int = Field(ge=1)
    oldest_dropped_ts: EpochMillis | None = None


EventMessage = Annotated[
    DoorEvent
    | IgnitionEvent
    | LockEvent
    | LowFuelEvent
    | LowVoltageEvent
    | SignalOutOfRangeEvent
    | BacklogOverflowEvent,
    Field(discriminator="type"),
]
"""What a car publishes on its events topic: one event, told apart by `type`."""

EVENT_ADAPTER: TypeAdapter[EventMessage] = TypeAdapter(EventMessage)
