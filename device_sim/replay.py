"""Replay a recorded CAN log (candump `.log`, `.asc`, anything python-can reads) through a unit.

Two ways, with the same sampling (`LogSampling`: a sample every `interval_s` of log time, and
right after a door, ignition or lock change, the first a second of log time after the first
frame, when every ECU has spoken):

* `play_log`: the frames go onto a CAN bus that a real `TelematicsUnit` listens to; the unit
  decodes them with its profile and publishes what it decodes through the broker, with its
  own identity, queue and sequence, like a car (`tgw sim replay`). The car's clock is the log's
  time moved so that the log ends when the replay started (`ReplayClock`), so timestamps are
  recent and spaced as recorded, whatever the playback speed.
* `replay_log`: offline, no broker: the same decoding and tracker, yielded as protocol v1 JSON
  messages (`tgw sim replay --print`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import can
from can.io.generic import MessageReader

from device_sim.canbus import FrameBus
from device_sim.codec import DecodeCounters, FrameDecoder
from device_sim.errors import DeviceConfigurationError
from device_sim.profiles import SignalProfile
from device_sim.tracker import SignalTracker
from schemas.telemetry import TelemetryMessage, TelemetrySample
from schemas.topics import TopicKind

if TYPE_CHECKING:
    from device_sim.unit import TelematicsUnit

__all__ = [
    "LogSampling",
    "ReplayClock",
    "ReplayedMessage",
    "log_span_ms",
    "open_log",
    "play_log",
    "replay_log",
]

_SETTLE_MS = 1000
_YIELD_EVERY = 200  # frames played between turns of the event loop when not paced


class LogSampling:
    """When a replayed car takes a sample, by log time (both replays use it).

    Args:
        interval_s: log time between samples.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_ms = int(interval_s * 1000)
        self._next_ms: int | None = None

    def due(self, now_ms: int, *, state_changed: bool, anything_sent: bool) -> bool:
        """Whether a sample is due after the frame at log time `now_ms` was decoded."""
        if self._next_ms is None:
            self._next_ms = now_ms + _SETTLE_MS
        return now_ms >= self._next_ms or (state_changed and anything_sent)

    def taken(self, now_ms: int) -> None:
        self._next_ms = now_ms + self._interval_ms


class ReplayClock:
    """The car's clock during a replay: the log's time (set frame by frame), moved by
    `offset_ms`."""

    def __init__(self, offset_ms: int, log_ms: int = 0) -> None:
        self.offset_ms = offset_ms
        self.log_ms = log_ms

    def now_ms(self) -> int:
        return self.log_ms + self.offset_ms


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
    sampling = LogSampling(interval_s)
    boot_id = uuid.uuid4().hex
    seq = 0
    with open_log(path) as reader:
        for frame in reader:
            now_ms = int(frame.timestamp * 1000)
            decoded = decoder.decode(frame)
            if decoded is not None:
                for draft in tracker.apply(decoded, now_ms):
                    event = draft.build(vin=vin, boot_id=boot_id, seq=seq, ts=now_ms)
                    seq += 1
                    yield ReplayedMessage(
                        TopicKind.EVENTS, event.model_dump_json(exclude_none=True)
                    )
            if not sampling.due(now_ms, state_changed=tracker.state_changed, anything_sent=seq > 0):
                continue
            signals = tracker.snapshot()
            if signals is None:
                continue
            sample = TelemetrySample(seq=seq, ts=now_ms, signals=signals)
            seq += 1
            tracker.state_changed = False
            sampling.taken(now_ms)
            message = TelemetryMessage(v=1, vin=vin, boot_id=boot_id, samples=(sample,))
            yield ReplayedMessage(TopicKind.TELEMETRY, message.model_dump_json(exclude_none=True))
    if counters is not None:
        for name in DecodeCounters.__dataclass_fields__:
            setattr(counters, name, getattr(decoder.counters, name))


def log_span_ms(path: Path) -> tuple[int, int]:
    """The first and last frame times of a log (ms); (0, 0) for a log without frames."""
    first: int | None = None
    last = 0
    with open_log(path) as reader:
        for frame in reader:
            last = int(frame.timestamp * 1000)
            if first is None:
                first = last
    return (first or 0, last)


async def play_log(
    path: Path,
    *,
    bus: FrameBus,
    unit: TelematicsUnit,
    clock: ReplayClock,
    interval_s: float = 1.0,
    speed: float = 0.0,
) -> int:
    """Send the log's frames onto `bus`, where `unit` listens, and take its samples by log time.

    The unit decodes each frame as it arrives (its events go out at once) and publishes, or
    queues while offline, like any car. Returns the number of frames played.

    Args:
        path: the log file.
        bus: the bus the unit hears (the player is another node on it).
        unit: a unit built with `sample_externally=True` and `clock`.
        clock: the unit's clock; set to each frame's log time before the frame is sent.
        interval_s: log time between samples.
        speed: 1.0 plays in real time, 10.0 ten times faster; 0 as fast as the unit takes it.

    Raises:
        CanBusError: a frame could not be put on the bus.
    """
    sampling = LogSampling(interval_s)
    started = time.monotonic()
    first_ms: int | None = None
    played = 0
    with open_log(path) as reader:
        for frame in reader:
            now_ms = int(frame.timestamp * 1000)
            if first_ms is None:
                first_ms = now_ms
            if speed > 0:
                ahead = started + (now_ms - first_ms) / 1000 / speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif played % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the unit publish what it has
            clock.log_ms = now_ms
            frame.channel = None  # the log's interface name means nothing on this bus
            bus.send(frame)
            played += 1
            counters = unit.counters
            if (
                sampling.due(
                    now_ms,
                    state_changed=unit.tracker.state_changed,
                    anything_sent=counters.samples + counters.events > 0,
                )
                and unit.emit_sample()
            ):
                sampling.taken(now_ms)
    return played
