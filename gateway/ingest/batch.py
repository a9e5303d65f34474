"""Turn validated messages into the rows of one database transaction (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.ingest.inbound import InboundMessage
from schemas import (
    SIGNAL_NAMES,
    Accepted,
    CommandResultMessage,
    EventMessage,
    Rejected,
    RejectionReason,
    StatusMessage,
    StatusReason,
    TelemetryMessage,
    ms_to_datetime,
)
from schemas.events import EVENT_ADAPTER

__all__ = [
    "DeadLetterRow",
    "EventRow",
    "IngestBatch",
    "LatestStateRow",
    "StatusUpdate",
    "TelemetryRow",
]

# Column order of the telemetry COPY: time, vin, boot_id, seq, received_at, then signals.
TelemetryRow = tuple[object, ...]
EventRow = tuple[datetime, str, str, int, str, str, datetime]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    received_at: datetime
    topic: str
    vin: str | None
    reason: str
    detail: str
    payload: bytes
    payload_size: int


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A car went online or offline at `changed_at`."""

    vin: str
    online: bool
    changed_at: datetime
    boot_id: str | None
    model: str | None
    firmware: str | None
    capabilities: tuple[str, ...] | None


@dataclass(slots=True)
class LatestStateRow:
    """The newest known value of each signal of one car within a batch."""

    vin: str
    time_ms: int
    boot_id: str
    seq: int
    signals: dict[str, float | bool] = field(default_factory=dict)
    signal_times: dict[str, int] = field(default_factory=dict)

    def merge(self, time_ms: int, boot_id: str, seq: int, signals: dict[str, float | bool]) -> None:
        if time_ms >= self.time_ms:
            self.time_ms, self.boot_id, self.seq = time_ms, boot_id, seq
        for name, value in signals.items():
            if time_ms >= self.signal_times.get(name, -1):
                self.signals[name] = value
                self.signal_times[name] = time_ms

    def as_row(self) -> tuple[object, ...]:
        return (
            ms_to_datetime(self.time_ms),
            self.vin,
            self.boot_id,
            self.seq,
            *(self.signals.get(name) for name in SIGNAL_NAMES),
        )


@dataclass(slots=True)
class IngestBatch:
    """Everything one transaction writes, and the messages to acknowledge after it commits."""

    dead_letter_payload_bytes: int = 8192
    telemetry: list[TelemetryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    latest: dict[str, LatestStateRow] = field(default_factory=dict)
    last_seen: dict[str, datetime] = field(default_factory=dict)
    messages: list[InboundMessage] = field(default_factory=list)
    oldest_device_ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, inbound: InboundMessage, outcome: Accepted | Rejected) -> None:
        """Add one classified message."""
        self.messages.append(inbound)
        received_at = ms_to_datetime(inbound.received_at_ms)
        if isinstance(outcome, Rejected):
            self.add_dead_letter(inbound, outcome.reason, outcome.detail, outcome.vin)
            return
        message = outcome.message
        vin = outcome.topic.vin
        if not inbound.retained:
            # A retained status replayed at subscribe time says nothing about now.
            self.last_seen[vin] = max(self.last_seen.get(vin, received_at), received_at)
        if isinstance(message, TelemetryMessage):
            self._add_telemetry(message, received_at)
        elif isinstance(message, StatusMessage):
            self._add_status(message, received_at)
        elif isinstance(message, CommandResultMessage):
            # Ingest does not subscribe to results; the command dispatcher owns them.
            self.add_dead_letter(
                inbound,
                RejectionReason.UNKNOWN_TOPIC,
                "command results are not ingest's to store",
                vin,
            )
        else:
            self._add_event(message, received_at)

    def add_dead_letter(
        self, inbound: InboundMessage, reason: str, detail: str, vin: str | None
    ) -> None:
        payload = inbound.payload
        self.dead_letters.append(
            DeadLetterRow(
                received_at=ms_to_datetime(inbound.received_at_ms),
                topic=inbound.topic,
                vin=vin,
                reason=str(reason),
                # PostgreSQL text cannot hold NUL; the raw payload keeps the original.
                detail=detail.replace("\x00", "\\x00"),
                payload=payload[: self.dead_letter_payload_bytes],
                payload_size=len(payload),
            )
        )

    def _add_telemetry(self, message: TelemetryMessage, received_at: datetime) -> None:
        vin, boot_id = message.vin, message.boot_id
        latest = self.latest.get(vin)
        for sample in message.samples:
            signals = sample.signals
            self.telemetry.append(
                (
                    ms_to_datetime(sample.ts),
                    vin,
                    boot_id,
                    sample.seq,
                    received_at,
                    *(getattr(signals, name) for name in SIGNAL_NAMES),
                )
            )
            self.oldest_device_ms.append(sample.ts)
            if latest is None:
                latest = self.latest[vin] = LatestStateRow(vin, sample.ts, boot_id, sample.seq)
            latest.merge(sample.ts, boot_id, sample.seq, signals.present())

    def _add_event(self, message: EventMessage, received_at: datetime) -> None:
        data = EVENT_ADAPTER.dump_json(
            message, exclude={"v", "vin", "boot_id", "seq", "ts", "type"}
        ).decode()
        self.events.append(
            (
                ms_to_datetime(message.ts),
                message.vin,
                message.boot_id,
                message.seq,
                message.type,
                data,
                received_at,
            )
        )
        self.oldest_device_ms.append(message.ts)

    def _add_status(self, message: StatusMessage, received_at: datetime) -> None:
        # A will's ts is its connect time; the moment the broker sent it is ours.
        lost = message.reason is StatusReason.CONNECTION_LOST
        changed_at = received_at if lost else ms_to_datetime(message.ts)
        self.statuses.append(
            StatusUpdate(
                vin=message.vin,
                online=message.online,
                changed_at=changed_at,
                boot_id=message.boot_id,
                model=message.model,
                firmware=message.firmware,
                capabilities=(
                    tuple(str(c) for c in message.capabilities) if message.capabilities else None
                ),
            )
        )
