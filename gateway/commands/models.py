"""What the command system tells the API and its streams: commands, transitions, events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, computed_field

from gateway.commands.lifecycle import Status
from schemas import CommandAction, Precondition

__all__ = [
    "PRECONDITION_ADVICE",
    "CommandEvent",
    "CommandPage",
    "CommandRecord",
    "NewCommand",
    "RateLimits",
    "Transition",
]


PRECONDITION_ADVICE: dict[str, str] = {
    Precondition.DOORS_CLOSED: "a door is open: close it, then try again",
    Precondition.TRUNK_CLOSED: "the trunk is open: close it, then try again",
    Precondition.IGNITION_OFF: "the ignition is on: end the trip (ignition off), then try again",
    Precondition.STATIONARY: "the car is moving: try again once it stands still",
}
"""What an operator can do about each precondition a car found failed (the CLI and the
console show it as the API sends it, in `advice`)."""


def _advice(failed_preconditions: list[str]) -> list[str]:
    return [PRECONDITION_ADVICE[p] for p in failed_preconditions if p in PRECONDITION_ADVICE]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class NewCommand(_Model):
    """A command request as the API received it (already authenticated)."""

    vin: str
    action: CommandAction
    requested_by: str
    ttl_s: int | None = None
    idempotency_key: str | None = None


class RateLimits(_Model):
    """New commands allowed per operator (token) and per car in a sliding window (0: no
    limit); counted in the database, so every gateway instance enforces the same."""

    per_operator: int
    per_vehicle: int
    window_s: int


class Transition(_Model):
    """One step of a command's lifecycle."""

    id: int
    status: Status
    at: datetime
    actor: str = Field(description="Who caused it: operator:<name>, gateway, or car:<VIN>.")
    detail: dict[str, Any] | None = None


class CommandRecord(_Model):
    """A command as stored, with its history when asked for."""

    command_id: UUID
    vin: str
    action: CommandAction
    status: Status
    requested_by: str
    idempotency_key: str | None
    created_at: datetime
    issued_at: datetime | None
    expires_at: datetime
    sent_at: datetime | None
    accepted_at: datetime | None
    finished_at: datetime | None
    reason: str | None = Field(description="Why it was rejected, failed, expired or timed out.")
    detail: str | None
    failed_preconditions: list[str]
    result_state: dict[str, Any] | None = Field(
        description="Signal values the car read back (request_state answers here)."
    )
    late_outcome: str | None = Field(
        description="A car answer that arrived after the gateway had decided (kept, not applied)."
    )
    key_id: str | None
    attempts: int
    transitions: list[Transition] | None = None

    @computed_field(description="What to do about each failed precondition, for a person.")  # type: ignore[prop-decorator]
    @property
    def advice(self) -> list[str]:
        return _advice(self.failed_preconditions)


class CommandPage(_Model):
    """One page of a car's commands, newest first."""

    items: list[CommandRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


class CommandEvent(_Model):
    """A state change, as the database announces it (NOTIFY) and the live streams send it."""

    transition_id: int
    command_id: UUID
    vin: str
    action: CommandAction
    status: Status
    at: datetime
    reason: str | None = None
    detail: str | None = None
    failed_preconditions: list[str] = []

    @computed_field(description="What to do about each failed precondition, for a person.")  # type: ignore[prop-decorator]
    @property
    def advice(self) -> list[str]:
        return _advice(self.failed_preconditions)
