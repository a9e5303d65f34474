"""Numeric limits of protocol v1, shared by the cars, the gateway and the docs."""

from __future__ import annotations

__all__ = [
    "MAX_BOOT_ID_LENGTH",
    "MAX_COMMAND_TTL_MS",
    "MAX_FUTURE_SKEW_MS",
    "MAX_PAST_AGE_MS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES_PER_MESSAGE",
    "MAX_SEQ",
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "PROTOCOL_VERSION",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SAMPLES_PER_MESSAGE = 500
MAX_BOOT_ID_LENGTH = 64
# 2**53 - 1: the largest integer every JSON parser reads exactly.
MAX_SEQ = 2**53 - 1
MIN_TIMESTAMP_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: older means the clock was never set
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# A car's clock may run ahead of the gateway's by this much before its data is refused.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
# Store and forward may deliver data this old (a car parked underground for a week).
MAX_PAST_AGE_MS = 7 * 24 * 60 * 60 * 1000
MAX_COMMAND_TTL_MS = 10 * 60 * 1000
