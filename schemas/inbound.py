"""Classify one uplink MQTT message: accepted with its model, or rejected with a reason.

Pure and total: any bytes on any topic yield an `Accepted` or a `Rejected`,
never an exception, so a gateway can turn every rejection into a dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from schemas.commands import CommandResultMessage
from schemas.events import EventMessage
from schemas.limits import (
    MAX_FUTURE_SKEW_MS,
    MAX_PAST_AGE_MS,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
)
from schemas.status import StatusMessage
from schemas.telemetry import TelemetryMessage
from schemas.topics import TopicError, TopicKind, VehicleTopic, parse_topic

__all__ = [
    "Accepted",
    "InboundLimits",
    "Rejected",
    "RejectionReason",
    "UplinkMessage",
    "decode_uplink",
]

UplinkMessage = TelemetryMessage | EventMessage | StatusMessage | CommandResultMessage


class RejectionReason(StrEnum):
    """Why a message became a dead letter. Stable names: dashboards and alerts use them."""

    UNKNOWN_TOPIC = "unknown_topic"  # not tgw/v1/vehicles/<VIN>/<uplink kind>
    OVERSIZED = "oversized"  # payload larger than MAX_PAYLOAD_BYTES
    NOT_JSON = "not_json"  # not UTF-8 JSON
    UNKNOWN_VERSION = "unknown_version"  # field v is missing or not a version we speak
    SCHEMA_VIOLATION = "schema_violation"  # the model refused it; detail has the field path
    VIN_MISMATCH = "vin_mismatch"  # payload VIN differs from the topic's
    CLOCK_SKEW = "clock_skew"  # a timestamp too far in the future or the past
    UNKNOWN_VEHICLE = "unknown_vehicle"  # not registered (only when registration is required)


@dataclass(frozen=True, slots=True)
class InboundLimits:
    """The gateway's tolerances, configurable per deployment."""

    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    max_past_age_ms: int = MAX_PAST_AGE_MS


@dataclass(frozen=True, slots=True)
class Accepted:
    topic: VehicleTopic
    message: UplinkMessage


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectionReason
    detail: str
    topic: str
    vin: str | None  # from the topic, when the topic was valid


_ADAPTERS: dict[TopicKind, TypeAdapter[Any]] = {
    TopicKind.TELEMETRY: TypeAdapter(TelemetryMessage),
    TopicKind.EVENTS: TypeAdapter(EventMessage),
    TopicKind.STATUS: TypeAdapter(StatusMessage),
    TopicKind.COMMAND_RESULTS: TypeAdapter(CommandResultMessage),
}
_MAX_ERRORS_IN_DETAIL = 3
_MAX_ERROR_IN_DETAIL = 400
_DEFAULT_LIMITS = InboundLimits()


def decode_uplink(
    topic: str,
    payload: bytes,
    *,
    received_at_ms: int,
    limits: InboundLimits = _DEFAULT_LIMITS,
) -> Accepted | Rejected:
    """Validate one message a car published.

    Args:
        topic: the concrete MQTT topic it arrived on.
        payload: the raw payload.
        received_at_ms: the gateway's clock when it arrived, for the skew check.
        limits: size and clock tolerances.
    """
    try:
        parsed_topic = parse_topic(topic)
    except TopicError as exc:
        return Rejected(RejectionReason.UNKNOWN_TOPIC, str(exc), topic, None)
    try:
        message = _decode_payload(parsed_topic, payload, received_at_ms, limits)
    except _RejectionError as rejection:
        return Rejected(rejection.reason, rejection.detail, topic, parsed_topic.vin)
    return Accepted(parsed_topic, message)


class _RejectionError(Exception):
    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _decode_payload(
    topic: VehicleTopic, payload: bytes, received_at_ms: int, limits: InboundLimits
) -> UplinkMessage:
    adapter = _ADAPTERS.get(topic.kind)
    if adapter is None:
        raise _RejectionError(
            RejectionReason.UNKNOWN_TOPIC,
            f"{topic.kind} is a downlink topic; cars do not publish on it",
        )
    if len(payload) > limits.max_payload_bytes:
        raise _RejectionError(
            RejectionReason.OVERSIZED,
            f"payload is {len(payload)} bytes, the limit is {limits.max_payload_bytes}",
        )
    try:
        message: UplinkMessage = adapter.validate_json(payload)
    except ValidationError as exc:
        raise _RejectionError(*_classify(exc, payload)) from exc
    if message.vin != topic.vin:
        raise _RejectionError(
            RejectionReason.VIN_MISMATCH,
            f"payload names VIN {message.vin} but was published on {topic.vin}'s topic",
        )
    skew = _clock_skew(message, received_at_ms, limits)
    if skew is not None:
        raise _RejectionError(RejectionReason.CLOCK_SKEW, skew)
    return message


def _classify(exc: ValidationError, payload: bytes) -> tuple[RejectionReason, str]:
    errors = exc.errors(include_url=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return RejectionReason.NOT_JSON, f"payload is not valid UTF-8 JSON: {errors[0]['msg']}"
    # The version is judged before the schema: a message of another version may differ
    # anywhere (an unknown event type, a new field), and that is not a schema violation.
    version_problem = _version_problem(payload)
    if version_problem is not None:
        return RejectionReason.UNKNOWN_VERSION, version_problem
    return RejectionReason.SCHEMA_VIOLATION, _describe(errors)


_MAX_VERSION_IN_DETAIL = 40


def _version_problem(payload: bytes) -> str | None:
    """Why the payload's `v` is not a version this gateway speaks, or None if it is."""
    try:
        # The parser validate_json used, so a payload it parsed parses here too.
        document = from_json(payload)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None  # not an object at all: a schema violation
    if "v" not in document:
        return f"field v is missing; this gateway speaks protocol version {PROTOCOL_VERSION}"
    version = document["v"]
    if not isinstance(version, bool) and version == PROTOCOL_VERSION:
        return None
    shown = json.dumps(version)[:_MAX_VERSION_IN_DETAIL]
    return f"protocol version {shown} is not supported; this gateway speaks {PROTOCOL_VERSION}"


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    # pydantic adds "tuple should have at least 1 item" to a tuple whose only item is
    # invalid; the item's own error is the one that helps.
    error_list = [error for error in errors if not _is_shadowed_length_error(error, errors)]
    for error in error_list[:_MAX_ERRORS_IN_DETAIL]:
        path = ".".join(str(part) for part in error["loc"]) or "(message)"
        part = f"{path}: {error['msg']}"
        # Keys and values come from the payload (a tag of 60 KiB is quoted whole): a dead
        # letter's reason stays short (found by fuzzing; tests/unit/test_security_fuzz.py).
        if len(part) > _MAX_ERROR_IN_DETAIL:
            part = part[: _MAX_ERROR_IN_DETAIL - 3] + "..."
        parts.append(part)
    more = len(error_list) - _MAX_ERRORS_IN_DETAIL
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _is_shadowed_length_error(error: Any, errors: Sequence[Any]) -> bool:
    if error["type"] != "too_short":
        return False
    loc = tuple(error["loc"])
    return any(
        len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in errors
    )


def _timestamps(message: BaseModel) -> Iterable[int]:
    if isinstance(message, TelemetryMessage):
        return (sample.ts for sample in message.samples)
    if isinstance(message, CommandResultMessage):
        return (message.ts,)
    return (message.ts,) if hasattr(message, "ts") else ()


def _clock_skew(message: UplinkMessage, now_ms: int, limits: InboundLimits) -> str | None:
    if isinstance(message, TelemetryMessage) and len(message.samples) == 1:
        # Live data, the common case: one timestamp, within both bounds.
        age_ms = now_ms - message.samples[0].ts
        if -limits.max_future_skew_ms <= age_ms <= limits.max_past_age_ms:
            return None
    # A last will carries its connect time, which may be long past: only the future counts.
    check_past = not isinstance(message, StatusMessage)
    for ts in _timestamps(message):
        if ts - now_ms > limits.max_future_skew_ms:
            return (
                f"timestamp {ts} is {(ts - now_ms) / 1000:.1f} s ahead of the gateway's clock "
                f"(tolerance {limits.max_future_skew_ms / 1000:.0f} s): check the car's clock"
            )
        if check_past and now_ms - ts > limits.max_past_age_ms:
            return (
                f"timestamp {ts} is {(now_ms - ts) / 3_600_000:.1f} h old "
                f"(limit {limits.max_past_age_ms / 3_600_000:.0f} h)"
            )
    return None
