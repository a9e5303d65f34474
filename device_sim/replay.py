"""Replay a recorded CAN log (candump `.log`, `.asc`, anything python-can reads) through a unit.

Offline: frames are decoded with a vehicle profile, change events and samples are made by
the same tracker the unit uses, timed by the log's own timestamps (a sample every
`interval_s` of log time, and right after a door, ignition or lock change), and yielded as
protocol v1 JSON messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can
from can.io.generic import MessageReader

from device_sim.codec import DecodeCounters, FrameDecoder
from device_sim.errors import DeviceConfigurationError
from device_sim.profiles import SignalProfile
from device_sim.tracker import SignalTracker
from schemas.telemetry import TelemetryMessage, TelemetrySample
from schemas.topics import TopicKind

__all__ = ["ReplayedMessage", "open_log", "replay_log"]

_SETTLE_MS = 1000


@dataclass(frozen=True, slots=True)
class ReplayedMessage:
    kind: TopicKind
    payload: str


def open_log(path: Path) -> MessageReader:
    """A python-can reader for the log file (format by extension)."""
    if not path.is_file():
        raise DeviceConfigurationError(f"CAN log {path} does not exist")
    try:
        return can.LogReader(path)
    except (ValueError, NotImplementedError, OSError) as exc:
        raise DeviceConfigurationError(
            f"cannot read CAN log {path}: {exc} (candump .log, .asc, .blf, .trc, .csv work)"
        ) from exc


def replay_log(
    path: Path,
    profile: SignalProfile,
    *,
    vin: str,
    interval_s: float = 1.0,
    counters: DecodeCounters | None = None,
) -> Iterator[ReplayedMessage]:
    """Decode a CAN log into telemetry and event messages, in log order.

    Args:
        path: the log file.
        profile: how to decode it.
        vin: the VIN to put in the messages.
        interval_s: log time between samples.
        counters: filled with the decoder's frame statistics, if given.
    """
    decoder = FrameDecoder(profile)
    tracker = SignalTracker()
    boot_id = uuid.uuid4().hex
    seq = 0
    next_sample_ms: int | None = None
    with open_log(path) as reader:
        for frame in reader:
            now_ms = int(frame.timestamp * 1000)
            if next_sample_ms is None:
                # The first sample waits a second of log time: every ECU has spoken by then.
                next_sample_ms = now_ms + _SETTLE_MS
            decoded = decoder.decode(frame)
            if decoded is not None:
                for draft in tracker.apply(decoded, now_ms):
                    event = draft.build(vin=vin, boot_id=boot_id, seq=seq, ts=now_ms)
                    seq += 1
                    yield ReplayedMessage(
                        TopicKind.EVENTS, event.model_dump_json(exclude_none=True)
                    )
            if now_ms < next_sample_ms and not (tracker.state_changed and seq > 0):
                continue
            signals = tracker.snapshot()
            if signals is None:
                continue
            sample = TelemetrySample(seq=seq, ts=now_ms, signals=signals)
            seq += 1
            tracker.state_changed = False
            next_sample_ms = now_ms + int(interval_s * 1000)
            message = TelemetryMessage(v=1, vin=vin, boot_id=boot_id, samples=(sample,))
            yield ReplayedMessage(TopicKind.TELEMETRY, message.model_dump_json(exclude_none=True))
    if counters is not None:
        for name in DecodeCounters.__dataclass_fields__:
            setattr(counters, name, getattr(decoder.counters, name))
