"""tgw protocol v1: the contract between in-car units and the gateway.

Imports only pydantic and the standard library; no I/O.
"""

from schemas.base import ms_to_datetime
from schemas.commands import (
    REJECTION_REASONS,
    CommandAction,
    CommandMessage,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Precondition,
    canonical_signing_bytes,
)
from schemas.events import (
    EVENT_ADAPTER,
    BacklogOverflowEvent,
    Door,
    DoorEvent,
    EventMessage,
    EventType,
    IgnitionEvent,
    LockEvent,
    LockSource,
    LowFuelEvent,
    LowVoltageEvent,
    SignalOutOfRangeEvent,
)
from schemas.inbound import (
    Accepted,
    InboundLimits,
    Rejected,
    RejectionReason,
    UplinkMessage,
    decode_uplink,
)
from schemas.limits import (
    MAX_COMMAND_TTL_MS,
    MAX_FUTURE_SKEW_MS,
    MAX_PAST_AGE_MS,
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES_PER_MESSAGE,
    PROTOCOL_VERSION,
)
from schemas.signals import SIGNAL_CATALOG, SIGNAL_NAMES, Signals, SignalSpec
from schemas.status import StatusMessage, StatusReason
from schemas.telemetry import TelemetryMessage, TelemetrySample
from schemas.topics import (
    GATEWAY_SHARE_GROUP,
    TOPIC_ROOT,
    TopicError,
    TopicKind,
    VehicleTopic,
    command_topic,
    parse_topic,
    shared_subscription,
    topic_filter,
    vehicle_topic,
)
from schemas.vin import VinError, parse_vin

__all__ = [
    "EVENT_ADAPTER",
    "GATEWAY_SHARE_GROUP",
    "MAX_COMMAND_TTL_MS",
    "MAX_FUTURE_SKEW_MS",
    "MAX_PAST_AGE_MS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES_PER_MESSAGE",
    "PROTOCOL_VERSION",
    "REJECTION_REASONS",
    "SIGNAL_CATALOG",
    "SIGNAL_NAMES",
    "TOPIC_ROOT",
    "Accepted",
    "BacklogOverflowEvent",
    "CommandAction",
    "CommandMessage",
    "CommandOutcome",
    "CommandReason",
    "CommandResultMessage",
    "Door",
    "DoorEvent",
    "EventMessage",
    "EventType",
    "IgnitionEvent",
    "InboundLimits",
    "LockEvent",
    "LockSource",
    "LowFuelEvent",
    "LowVoltageEvent",
    "Precondition",
    "Rejected",
    "RejectionReason",
    "SignalOutOfRangeEvent",
    "SignalSpec",
    "Signals",
    "StatusMessage",
    "StatusReason",
    "TelemetryMessage",
    "TelemetrySample",
    "TopicError",
    "TopicKind",
    "UplinkMessage",
    "VehicleTopic",
    "VinError",
    "canonical_signing_bytes",
    "command_topic",
    "decode_uplink",
    "ms_to_datetime",
    "parse_topic",
    "parse_vin",
    "shared_subscription",
    "topic_filter",
    "vehicle_topic",
]
