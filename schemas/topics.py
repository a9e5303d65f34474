"""Topic namespace of protocol v1: builders and a strict parser.

Every topic is ``tgw/v1/vehicles/{VIN}/{kind}``; the VIN in the topic is the
authority the broker's ACL enforces, so payloads must repeat the same VIN.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.vin import _VIN_RE, VIN_LENGTH, VinError, parse_vin

__all__ = [
    "GATEWAY_SHARE_GROUP",
    "TOPIC_ROOT",
    "Direction",
    "TopicError",
    "TopicKind",
    "VehicleTopic",
    "command_topic",
    "parse_topic",
    "shared_subscription",
    "topic_filter",
    "vehicle_topic",
]

TOPIC_ROOT = "tgw/v1/vehicles"
GATEWAY_SHARE_GROUP = "tgw-gateway"


class Direction(StrEnum):
    """Who publishes on a topic kind."""

    UPLINK = "uplink"  # car -> gateway
    DOWNLINK = "downlink"  # gateway -> car


class TopicKind(StrEnum):
    """The last topic level: what a message on it carries."""

    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"
    COMMANDS = "commands"
    COMMAND_RESULTS = "command_results"

    @property
    def direction(self) -> Direction:
        return Direction.DOWNLINK if self is TopicKind.COMMANDS else Direction.UPLINK


UPLINK_KINDS = tuple(kind for kind in TopicKind if kind.direction is Direction.UPLINK)


class TopicError(ValueError):
    """A topic is outside the protocol v1 namespace; the message says why."""


@dataclass(frozen=True, slots=True)
class VehicleTopic:
    """A parsed topic: which car, which kind of message."""

    vin: str
    kind: TopicKind

    def __str__(self) -> str:
        return vehicle_topic(self.vin, self.kind)


def vehicle_topic(vin: str, kind: TopicKind) -> str:
    """The topic a car publishes `kind` on (or, for commands, receives them on)."""
    return f"{TOPIC_ROOT}/{parse_vin(vin)}/{kind.value}"


def command_topic(vin: str) -> str:
    """The topic the gateway publishes a car's commands on."""
    return vehicle_topic(vin, TopicKind.COMMANDS)


def topic_filter(kind: TopicKind) -> str:
    """The wildcard filter matching `kind` for every car (gateway side)."""
    return f"{TOPIC_ROOT}/+/{kind.value}"


def shared_subscription(kind: TopicKind, group: str = GATEWAY_SHARE_GROUP) -> str:
    """An MQTT 5 shared subscription so gateway instances split `kind` between them."""
    return f"$share/{group}/{topic_filter(kind)}"


_ROOT_LEVELS = TOPIC_ROOT.split("/")
_LEVELS = len(_ROOT_LEVELS) + 2
_KINDS = {kind.value: kind for kind in TopicKind}


_PREFIX = TOPIC_ROOT + "/"
_VIN_START = len(_PREFIX)
_VIN_END = _VIN_START + VIN_LENGTH


# Parsed well-formed topics (VehicleTopic is immutable): a fleet's topics repeat with every
# message. Bounded; emptied when full (about 3 MB at most).
_PARSED: dict[str, VehicleTopic] = {}
_PARSED_MAX = 32_768


def parse_topic(topic: str) -> VehicleTopic:
    """Parse a concrete topic (no wildcards) into VIN and kind, or raise `TopicError`."""
    parsed = _PARSED.get(topic)
    if parsed is not None:
        return parsed
    # Fast path (every message the gateway receives): prefix, 17-character VIN, "/", kind.
    # A kind holds no "/" and a VIN matching the pattern holds none either, so this accepts
    # exactly the well-formed topics the general path below accepts.
    if topic.startswith(_PREFIX) and topic[_VIN_END : _VIN_END + 1] == "/":
        kind = _KINDS.get(topic[_VIN_END + 1 :])
        vin = topic[_VIN_START:_VIN_END]
        if kind is not None and _VIN_RE.fullmatch(vin):
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            parsed = _PARSED[topic] = VehicleTopic(vin=vin, kind=kind)
            return parsed
    levels = topic.split("/")
    if len(levels) != _LEVELS or levels[: len(_ROOT_LEVELS)] != _ROOT_LEVELS:
        raise TopicError(f"topic {topic!r} is not of the form {TOPIC_ROOT}/<VIN>/<kind>")
    vin_level, kind_level = levels[-2], levels[-1]
    try:
        vin = parse_vin(vin_level)
    except VinError as exc:
        raise TopicError(f"topic {topic!r} has an invalid VIN: {exc}") from exc
    kind = _KINDS.get(kind_level)
    if kind is None:
        known = ", ".join(_KINDS)
        raise TopicError(f"topic {topic!r} has unknown kind {kind_level!r} (known: {known})")
    return VehicleTopic(vin=vin, kind=kind)
