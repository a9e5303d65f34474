"""One message as it arrived from the broker, before validation."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["InboundMessage"]


# A NamedTuple, not a frozen dataclass: built for every message, and a third the cost.
class InboundMessage(NamedTuple):
    """A received MQTT message and what is needed to acknowledge it after commit.

    `generation` counts broker connections: a packet id is only meaningful on the
    connection that delivered it, so acknowledgements for older generations are
    dropped (the broker redelivers those messages, and storage is idempotent).
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_at_ms: int
    retained: bool = False
    # MQTT DUP: the broker sent it before (a resumed session); the first copy may be stored.
    redelivered: bool = False
