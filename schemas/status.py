"""Connectivity status: the retained birth message and the last will."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from schemas.base import TEXT_PATTERN, BootId, EpochMillis, ProtocolModel, ProtocolVersion
from schemas.commands import CommandAction
from schemas.vin import Vin

__all__ = ["StatusMessage", "StatusReason"]


class StatusReason(StrEnum):
    CONNECTED = "connected"  # birth, published retained right after CONNACK
    DISCONNECTED = "disconnected"  # orderly shutdown, published before DISCONNECT
    CONNECTION_LOST = "connection_lost"  # the last will, published by the broker


class StatusMessage(ProtocolModel):
    """Whether a car is online. Retained, so a new subscriber learns every car's state at once.

    The last will's `ts` is the time the car connected (a will is fixed at connect);
    the gateway therefore records its own receive time for going offline.
    """

    v: ProtocolVersion
    vin: Vin
    online: bool
    reason: StatusReason
    ts: EpochMillis
    boot_id: BootId | None = None
    model: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9_]+$",
        description="Vehicle profile name, e.g. bmw_e8x.",
    )
    firmware: str | None = Field(default=None, max_length=64, pattern=TEXT_PATTERN)
    capabilities: tuple[CommandAction, ...] | None = Field(
        default=None, description="Commands this car can execute (birth only)."
    )

    @model_validator(mode="after")
    def _check_reason(self) -> Self:
        if self.online != (self.reason is StatusReason.CONNECTED):
            raise ValueError("reason: online is true exactly when reason is 'connected'")
        if self.online and (self.boot_id is None or self.capabilities is None):
            raise ValueError("a birth message (online) carries boot_id and capabilities")
        return self
