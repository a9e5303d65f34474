"""Turn validated messages into the rows of one database transaction (pure logic)."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
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
    Signals,
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
    "SignalValues",
    "StatusUpdate",
    "TelemetryRow",
]

# Column order of the telemetry COPY: time, vin, boot_id, seq, received_at, then signals.
TelemetryRow = tuple[object, ...]
SignalValues = tuple[float | bool | None, ...]

# All signals of a sample in one C call (SIGNAL_NAMES order): the hot path of ingest.
_signal_values: Callable[[Signals], SignalValues] = operator.attrgetter(*SIGNAL_NAMES)
# Where the signals start in a TelemetryRow, and how a row sorts by device time (time, seq).
_FIRST_SIGNAL = 5
_SIGNAL_RANGE = range(_FIRST_SIGNAL, _FIRST_SIGNAL + len(SIGNAL_NAMES))
_device_order: Callable[[TelemetryRow], tuple[object, object]] = operator.itemgetter(0, 3)
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
    payload_sha256: bytes
    # Delivered again by the broker (DUP): kept only if the same bytes are not kept already.
    redelivered: bool = False

    def as_row(self) -> tuple[object, ...]:
        """Values in `gateway.storage.sql.DEAD_LETTER_COLUMNS` order."""
        return (
            self.received_at,
            self.topic,
            self.vin,
            self.reason,
            self.detail,
            self.payload,
            self.payload_size,
            self.payload_sha256,
        )


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
    # Applied only over a state that changed no later than this: a will carries its
    # connection's start, so a late will of an old connection cannot undo a newer birth.
    applies_after: datetime


@dataclass(slots=True)
class IngestBatch:
    """Everything one transaction writes, and the messages to acknowledge after it commits."""

    dead_letter_payload_bytes: int = 8192
    telemetry: list[TelemetryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    # Per car, its telemetry rows in this batch (most cars send one message per batch).
    rows_by_car: dict[str, list[TelemetryRow]] = field(default_factory=dict)
    last_seen: dict[str, datetime] = field(default_factory=dict)
    messages: list[InboundMessage] = field(default_factory=list)
    oldest_device_ms: list[int] = field(default_factory=list)
    _device_times: dict[int, datetime] = field(default_factory=dict, init=False, repr=False)
    _received_ms: int = field(default=-1, init=False, repr=False)
    _received_dt: datetime = field(default=datetime.min, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.messages)

    def latest_candidates(self) -> list[TelemetryRow]:
        """The rows that may move each car's latest state.

        Per car: its newest sample, and any older one that carries a signal no newer one does
        (a sample with only a door reading, say). The database compares them with the state
        it holds (`UPSERT_LATEST_STATE_FROM_STAGE`), so a sample older than that state moves
        nothing, whatever else the batch holds.
        """
        candidates: list[TelemetryRow] = []
        for rows in self.rows_by_car.values():
            if len(rows) == 1:
                candidates.append(rows[0])
                continue
            uncovered = set(_SIGNAL_RANGE)
            for position, row in enumerate(sorted(rows, key=_device_order, reverse=True)):
                carried = {index for index in uncovered if row[index] is not None}
                if carried or position == 0:
                    candidates.append(row)
                    uncovered -= carried
                if not uncovered:
                    break
        return candidates

    def add(self, inbound: InboundMessage, outcome: Accepted | Rejected) -> None:
        """Add one classified message."""
        self.messages.append(inbound)
        received_at = self._received_at(inbound.received_at_ms)
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
                payload_sha256=hashlib.sha256(payload).digest(),
                redelivered=inbound.redelivered,
            )
        )

    def _received_at(self, received_at_ms: int) -> datetime:
        # Messages of one read share their receive time: convert it once.
        if received_at_ms != self._received_ms:
            self._received_ms, self._received_dt = received_at_ms, ms_to_datetime(received_at_ms)
        return self._received_dt

    def _add_telemetry(self, message: TelemetryMessage, received_at: datetime) -> None:
        vin, boot_id = message.vin, message.boot_id
        car_rows = self.rows_by_car.get(vin)
        if car_rows is None:
            car_rows = self.rows_by_car[vin] = []
        rows = self.telemetry
        times = self._device_times
        for sample in message.samples:
            ts, seq = sample.ts, sample.seq
            values = _signal_values(sample.signals)
            # Many samples share a millisecond at high rates; converting costs a µs.
            at = times.get(ts)
            if at is None:
                at = times[ts] = ms_to_datetime(ts)
            row = (at, vin, boot_id, seq, received_at, *values)
            rows.append(row)
            car_rows.append(row)
            self.oldest_device_ms.append(ts)

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
        sent_at = ms_to_datetime(message.ts)
        changed_at = received_at if lost else sent_at
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
                applies_after=sent_at,
            )
        )
