"""Shared building blocks of the protocol models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.limits import (
    MAX_BOOT_ID_LENGTH,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    PROTOCOL_VERSION,
)

__all__ = [
    "TEXT_PATTERN",
    "BootId",
    "EpochMillis",
    "ProtocolModel",
    "ProtocolVersion",
    "Seq",
    "ms_to_datetime",
]


class ProtocolModel(BaseModel):
    """Base of every wire model: immutable, strict types, unknown fields refused."""

    # strict: a vendor sending "12" for a number is told so instead of being silently coerced.
    # allow_inf_nan=False: NaN and Infinity are not JSON, and PostgreSQL's jsonb refuses them.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


def _refuse_bool(value: Any) -> Any:
    # Literal[1] alone accepts JSON `true` (True == 1 in Python); JSON Schema's const 1 does not.
    if isinstance(value, bool):
        # TRY004 ignored: pydantic turns only ValueError into a ValidationError; TypeError escapes.
        raise ValueError(  # noqa: TRY004
            f"the protocol version is the number {PROTOCOL_VERSION}, not a boolean"
        )
    return value


ProtocolVersion = Annotated[
    Literal[1],
    BeforeValidator(_refuse_bool),
    Field(description=f"Protocol version; this contract is version {PROTOCOL_VERSION}."),
]
EpochMillis = Annotated[
    int,
    Field(
        ge=MIN_TIMESTAMP_MS,
        le=MAX_TIMESTAMP_MS,
        description="UTC time in milliseconds since the Unix epoch.",
    ),
]
BootId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_BOOT_ID_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Identifies one boot of the in-car unit; chosen anew at every start "
        "(a UUID without braces is a good choice).",
    ),
]
Seq = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_SEQ,
        description="Per-boot sequence number; every sample and event takes the next one.",
    ),
]


# Free text fields refuse control characters: NUL cannot be stored in PostgreSQL text,
# and the rest only ever hide mischief in logs and consoles.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def ms_to_datetime(ms: int) -> datetime:
    """Convert protocol milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
