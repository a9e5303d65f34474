"""Remote commands (gateway -> car) and their results (car -> gateway)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Self
from uuid import UUID

from pydantic import Field, model_validator

from schemas.base import TEXT_PATTERN, EpochMillis, ProtocolModel, ProtocolVersion
from schemas.limits import MAX_COMMAND_TTL_MS
from schemas.signals import Signals
from schemas.vin import Vin

__all__ = [
    "REJECTION_REASONS",
    "CommandAction",
    "CommandMessage",
    "CommandOutcome",
    "CommandReason",
    "CommandResultMessage",
    "Precondition",
]


class CommandAction(StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"
    # Car sharing: the rental starts or ends; central lock plus immobilizer.
    UNLOCK_AND_ENABLE_DRIVING = "unlock_and_enable_driving"
    LOCK_AND_DISABLE_DRIVING = "lock_and_disable_driving"
    REQUEST_STATE = "request_state"


class CommandOutcome(StrEnum):
    """What the car answers: first accepted or rejected, then executed or failed."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXECUTED = "executed"
    FAILED = "failed"


class CommandReason(StrEnum):
    """Why a car rejected a command or why executing it failed."""

    MALFORMED = "malformed"  # the payload did not validate
    WRONG_VEHICLE = "wrong_vehicle"  # the command names another VIN
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"  # expires_at has passed on the car's clock
    REPLAY = "replay"  # command id or nonce seen before
    BUSY = "busy"  # another command is executing
    UNSUPPORTED = "unsupported"  # the car cannot do this action
    PRECONDITION_FAILED = "precondition_failed"
    CAN_TIMEOUT = "can_timeout"  # the body ECU did not confirm in time
    CAN_ERROR = "can_error"  # writing to the bus failed


REJECTION_REASONS = frozenset(
    {
        CommandReason.MALFORMED,
        CommandReason.WRONG_VEHICLE,
        CommandReason.BAD_SIGNATURE,
        CommandReason.EXPIRED,
        CommandReason.REPLAY,
        CommandReason.BUSY,
        CommandReason.UNSUPPORTED,
        CommandReason.PRECONDITION_FAILED,
    }
)


class Precondition(StrEnum):
    """A condition the car checks before acting; named in a rejection when it fails."""

    DOORS_CLOSED = "doors_closed"
    TRUNK_CLOSED = "trunk_closed"
    IGNITION_OFF = "ignition_off"
    STATIONARY = "stationary"


Nonce = Annotated[
    str,
    Field(pattern=r"^[0-9a-f]{32,64}$", description="At least 128 random bits, lowercase hex."),
]


class CommandMessage(ProtocolModel):
    """A signed command, published with QoS 1 on the car's commands topic.

    The signature covers `signing_bytes()`: every field but `signature`, as
    canonical JSON (keys sorted, no spaces, UTF-8).
    """

    v: ProtocolVersion
    command_id: UUID
    vin: Vin
    action: CommandAction
    issued_at: EpochMillis
    expires_at: EpochMillis
    nonce: Nonce
    key_id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Which of the gateway's signing keys signed this (keys rotate).",
    )
    signature: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9+/]+={0,2}$",
        description="Base64 signature over signing_bytes().",
    )

    @model_validator(mode="after")
    def _check_deadline(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at: a command expires after it is issued")
        if self.expires_at - self.issued_at > MAX_COMMAND_TTL_MS:
            raise ValueError(f"expires_at: a command lives at most {MAX_COMMAND_TTL_MS // 1000} s")
        return self

    def signing_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return canonical_signing_bytes(self.model_dump(mode="json", exclude={"signature"}))


def canonical_signing_bytes(fields: dict[str, object]) -> bytes:
    """Canonical JSON of a command's fields (without `signature`), as signed and verified."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CommandResultMessage(ProtocolModel):
    """A car's answer to a command, published on its command_results topic.

    (The command's MQTT 5 response topic is that topic, and the correlation data
    is the command id.)
    """

    v: ProtocolVersion
    command_id: UUID
    vin: Vin
    ts: EpochMillis
    outcome: CommandOutcome
    reason: CommandReason | None = None
    failed_preconditions: tuple[Precondition, ...] = ()
    detail: str | None = Field(default=None, max_length=500, pattern=TEXT_PATTERN)
    state: Signals | None = Field(
        default=None, description="The car's state after executing (e.g. the lock read back)."
    )

    @model_validator(mode="after")
    def _check_reason(self) -> Self:
        if self.outcome in (CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED):
            if self.reason is not None:
                raise ValueError(f"reason: an {self.outcome} result carries no reason")
        elif self.reason is None:
            raise ValueError(f"reason: a {self.outcome} result says why")
        elif self.outcome is CommandOutcome.REJECTED and self.reason not in REJECTION_REASONS:
            raise ValueError(f"reason: {self.reason} is not a reason to reject")
        if self.failed_preconditions and self.reason is not CommandReason.PRECONDITION_FAILED:
            raise ValueError("failed_preconditions: only with reason precondition_failed")
        if self.reason is CommandReason.PRECONDITION_FAILED and not self.failed_preconditions:
            raise ValueError("failed_preconditions: name the preconditions that failed")
        return self
