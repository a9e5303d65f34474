"""Frames to wire signals and back, as a vehicle profile says.

`FrameDecoder` is the telematics unit's side: it turns CAN frames into canonical
signal values, ignores (and counts) frames the profile does not read, and flags
values outside the signal's range instead of passing them on. It never raises on
a frame: garbage is counted, not fatal.

`FrameEncoder` is the simulated ECUs' side: it turns vehicle state into the frames
a real car of that model would send.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import can
from cantools.database import Message
from cantools.database.errors import DecodeError, EncodeError

from device_sim.errors import ProfileError
from device_sim.profiles import Immobilizer, SignalMapping, SignalProfile

__all__ = [
    "DecodeCounters",
    "Decoded",
    "FrameDecoder",
    "FrameEncoder",
    "OutOfRange",
    "WireValue",
]

WireValue = float | bool

_FRAME_CACHE_SIZE = 50_000  # encoded frames kept per encoder (cleared when full)


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """A decoded value outside its range; it is reported, never used as the signal's value."""

    signal: str  # wire name
    value: float
    minimum: float | None
    maximum: float | None


@dataclass(slots=True)
class Decoded:
    """What one frame said: wire signal values, values flagged as out of range.

    Shared between the decoders of a process (cached by payload): read it, never change it.
    """

    values: dict[str, WireValue] = field(default_factory=dict)
    out_of_range: list[OutOfRange] = field(default_factory=list)
    immobilized: bool | None = None  # the immobilizer status, when the frame carries it


@dataclass(slots=True)
class DecodeCounters:
    """Per-unit frame statistics (reported in the unit's summary and logs)."""

    frames: int = 0
    decoded: int = 0
    unchanged: int = 0  # same payload as the last frame with that id: nothing new to decode
    unknown: int = 0  # frame id this profile does not read
    malformed: int = 0  # wrong length, remote or error frame, undecodable payload
    invalid: int = 0  # "not available" values (e.g. sensor initialising)
    out_of_range: int = 0


@dataclass(frozen=True, slots=True)
class _Reader:
    mapping: SignalMapping
    digits: int  # round wire values to the signal's resolution (no 30.075000000000003)
    tolerance: float  # half a raw step: float noise is not out of range


@dataclass(frozen=True, slots=True)
class _Plan:
    message: Message
    readers: tuple[_Reader, ...]
    immobilizer_signal: str | None
    immobilized_raw: frozenset[int]


# What a payload says, by (plan, payload), shared by every decoder of the process: in a fleet
# many cars send the same frame (a speed, a door state). Decoded results are only ever read.
_DECODED: dict[tuple[int, bytes], tuple[Decoded, int, int]] = {}
_DECODED_SIZE = 50_000


def _digits(resolution: float) -> int:
    resolution = abs(resolution)
    if resolution == 0 or resolution >= 1:
        return 3
    return math.ceil(-math.log10(resolution)) + 1


# Decode plans by profile identity (profiles are cached by the loader); the entry holds the
# profile, so its id cannot be reused by another object while the entry exists.
_PLANS: dict[int, tuple[SignalProfile, dict[tuple[int, bool], _Plan]]] = {}


def _decode_plans(profile: SignalProfile) -> dict[tuple[int, bool], _Plan]:
    """What a decoder reads from each frame id of the profile."""
    plans: dict[int, list[_Reader]] = {}
    messages: dict[int, Message] = {}
    for mapping in profile.mappings:
        resolution = float(mapping.signal.scale) * mapping.scale
        reader = _Reader(mapping, _digits(resolution), abs(float(mapping.signal.scale)) / 2)
        plans.setdefault(mapping.message.frame_id, []).append(reader)
        messages[mapping.message.frame_id] = mapping.message
    immobilizer = profile.immobilizer
    if immobilizer is not None:
        plans.setdefault(immobilizer.status_message.frame_id, [])
        messages[immobilizer.status_message.frame_id] = immobilizer.status_message
    result: dict[tuple[int, bool], _Plan] = {}
    for frame_id, readers in plans.items():
        message = messages[frame_id]
        status = (
            immobilizer
            if immobilizer is not None and immobilizer.status_message is message
            else None
        )
        result[(frame_id, bool(message.is_extended_frame))] = _Plan(
            message=message,
            readers=tuple(readers),
            immobilizer_signal=status.status_signal.name if status else None,
            immobilized_raw=status.immobilized_raw if status else frozenset(),
        )
    return result


class FrameDecoder:
    """Decodes a car's CAN frames into wire signals with one vehicle profile.

    Not thread-safe; one decoder per in-car unit (it remembers the last payload per frame id).
    """

    def __init__(self, profile: SignalProfile) -> None:
        self.profile = profile
        self.counters = DecodeCounters()
        self._last_payload: dict[tuple[int, bool], bytes] = {}
        # Immutable and the same for every car of a model: built once per profile.
        entry = _PLANS.get(id(profile))
        if entry is None:
            entry = _PLANS[id(profile)] = (profile, _decode_plans(profile))
        self._plans = entry[1]

    def decode(self, frame: can.Message) -> Decoded | None:
        """Decode one frame; None when it carries nothing new (unknown, unchanged or garbage)."""
        counters = self.counters
        counters.frames += 1
        key = (frame.arbitration_id, bool(frame.is_extended_id))
        plan = self._plans.get(key)
        if plan is None:
            counters.unknown += 1
            return None
        data = bytes(frame.data)
        if self._last_payload.get(key) == data:
            counters.unchanged += 1
            return None
        if frame.is_error_frame or frame.is_remote_frame or len(data) != plan.message.length:
            counters.malformed += 1
            return None
        cache_key = (id(plan), data)
        cached = _DECODED.get(cache_key)
        if cached is None:
            raw_values = _raw_values(plan, data)
            if raw_values is None:
                counters.malformed += 1
                return None
            cached = _interpret(plan, raw_values)
            if len(_DECODED) >= _DECODED_SIZE:
                _DECODED.clear()
            _DECODED[cache_key] = cached
        decoded, invalid, out_of_range = cached
        counters.invalid += invalid
        counters.out_of_range += out_of_range
        self._last_payload[key] = data
        counters.decoded += 1
        return decoded


def _raw_values(plan: _Plan, data: bytes) -> Mapping[str, object] | None:
    try:
        raw_values = plan.message.decode(data, decode_choices=False, scaling=False)
    except (DecodeError, ValueError):
        return None
    # Container (multiplexed PDU) messages decode to a list; profiles do not read them.
    return raw_values if isinstance(raw_values, dict) else None


def _interpret(plan: _Plan, raw_values: Mapping[str, object]) -> tuple[Decoded, int, int]:
    """What the frame says by the plan, with how many values were invalid and out of range."""
    invalid = out_of_range = 0
    result = Decoded()
    for reader in plan.readers:
        mapping = reader.mapping
        raw = raw_values.get(mapping.signal.name)
        if not isinstance(raw, int | float):
            continue  # a multiplexed signal absent from this frame
        if raw in mapping.invalid_raw:
            invalid += 1
            continue
        if mapping.is_bool:
            if raw in mapping.true_raw:
                result.values[mapping.wire] = True
            elif mapping.false_raw is None or raw in mapping.false_raw:
                result.values[mapping.wire] = False
            else:
                out_of_range += 1
                result.out_of_range.append(OutOfRange(mapping.wire, float(raw), None, None))
            continue
        physical = mapping.raw_to_physical(raw)
        low, high = mapping.dbc_minimum, mapping.dbc_maximum
        if (low is not None and physical < low - reader.tolerance) or (
            high is not None and physical > high + reader.tolerance
        ):
            out_of_range += 1
            result.out_of_range.append(OutOfRange(mapping.wire, physical, low, high))
            continue
        value = round(physical * mapping.scale + mapping.offset, reader.digits)
        spec = mapping.spec
        too_high = spec.maximum is not None and (
            value >= spec.maximum if spec.maximum_exclusive else value > spec.maximum
        )
        if (spec.minimum is not None and value < spec.minimum) or too_high:
            out_of_range += 1
            result.out_of_range.append(OutOfRange(mapping.wire, value, spec.minimum, spec.maximum))
            continue
        result.values[mapping.wire] = value
    if plan.immobilizer_signal is not None:
        status = raw_values.get(plan.immobilizer_signal)
        if isinstance(status, int):
            result.immobilized = status in plan.immobilized_raw
    return result, invalid, out_of_range


class FrameEncoder:
    """Encodes vehicle state into a model's frames (the simulated ECUs' side).

    Signals the profile does not map are sent as 0 (or their minimum), like an ECU at rest;
    checksums and alive counters of real DBCs are not simulated.
    """

    def __init__(self, profile: SignalProfile) -> None:
        self.profile = profile
        self._frames: dict[tuple[int, bool, tuple[int | float, ...]], can.Message] = {}
        self.cache_hits = self.cache_misses = 0
        self._base: dict[int, dict[str, int | float]] = {}
        self._mappings: dict[int, tuple[SignalMapping, ...]] = {}
        grouped: dict[int, list[SignalMapping]] = {}
        for mapping in profile.mappings:
            grouped.setdefault(mapping.message.frame_id, []).append(mapping)
        for message in profile.mapped_messages:
            self._base[message.frame_id] = _rest_values(message)
            self._mappings[message.frame_id] = tuple(grouped.get(message.frame_id, ()))

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.profile.mapped_messages

    def mappings_of(self, message: Message) -> tuple[SignalMapping, ...]:
        """The profile's mappings carried by `message`, in the order `encode_raw` takes."""
        return self._mappings[message.frame_id]

    def encode_raw(
        self, message: Message, raws: tuple[int | float, ...], *, immobilized: bool = False
    ) -> can.Message:
        """The frame for raw values already converted by the caller (`SignalMapping.wire_to_raw`
        of each of `mappings_of(message)`, in order): the simulated ECUs' hot path."""
        key = (message.frame_id, immobilized, raws)
        cached = self._frames.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        if len(self._frames) >= _FRAME_CACHE_SIZE:
            self._frames.clear()
        frame = self._frames[key] = self._encode_raw(message, raws, immobilized=immobilized)
        return frame

    def _encode_raw(
        self, message: Message, raws: tuple[int | float, ...], *, immobilized: bool
    ) -> can.Message:
        raw = dict(self._base[message.frame_id])
        bounds = _bounds(message)
        for mapping, value in zip(self._mappings[message.frame_id], raws, strict=True):
            name = mapping.signal.name
            raw[name] = _clamp(bounds[name], value)
        immobilizer = self.profile.immobilizer
        if immobilizer is not None and immobilizer.status_message is message:
            raw[immobilizer.status_signal.name] = (
                min(immobilizer.immobilized_raw) if immobilized else _other_raw(immobilizer)
            )
        return _encode(message, raw)

    def encode(
        self,
        message: Message,
        values: Mapping[str, WireValue],
        *,
        immobilized: bool = False,
        raw_overrides: Mapping[str, int | float] | None = None,
    ) -> can.Message:
        """The frame `message` carries for these wire values.

        Args:
            message: one of `messages`.
            values: wire signal values; mapped signals missing here are sent as at rest.
            immobilized: the immobilizer state, for the profile's immobilizer status frame.
            raw_overrides: raw DBC values that win over everything (tests, fault injection).
        """
        raw = dict(self._base[message.frame_id])
        bounds = _bounds(message)
        for mapping in self._mappings[message.frame_id]:
            value = values.get(mapping.wire)
            if value is not None:
                name = mapping.signal.name
                raw[name] = _clamp(bounds[name], mapping.wire_to_raw(value))
        immobilizer = self.profile.immobilizer
        if immobilizer is not None and immobilizer.status_message is message:
            raw[immobilizer.status_signal.name] = (
                min(immobilizer.immobilized_raw) if immobilized else _other_raw(immobilizer)
            )
        if raw_overrides:
            for name, value in raw_overrides.items():
                if name not in bounds:
                    raise ProfileError(f"cannot encode {message.name}: no signal {name!r}")
                raw[name] = _clamp(bounds[name], value)
        return _encode(message, raw)


def encode_frame(message: Message, raw: Mapping[str, int | float]) -> can.Message:
    """Encode raw signal values (clamped to their bit width) into a python-can frame."""
    bounds = _bounds(message)
    clamped: dict[str, int | float] = {}
    for name, value in raw.items():
        if name not in bounds:
            raise ProfileError(f"cannot encode {message.name}: it has no signal {name!r}")
        clamped[name] = _clamp(bounds[name], value)
    return _encode(message, clamped)


def _encode(message: Message, raw: dict[str, int | float]) -> can.Message:
    try:
        data = message.encode(raw, scaling=False, strict=False)
    except (EncodeError, KeyError, ValueError) as exc:
        raise ProfileError(f"cannot encode {message.name}: {exc}") from exc
    return can.Message(
        arbitration_id=message.frame_id,
        data=data,
        is_extended_id=bool(message.is_extended_frame),
    )


def _clamp(limits: tuple[int, int] | tuple[None, None], value: int | float) -> int | float:
    low, high = limits
    if low is None or high is None:
        return value
    return min(max(round(value), low), high)


_BOUNDS: dict[int, dict[str, tuple[int, int] | tuple[None, None]]] = {}


def _bounds(message: Message) -> dict[str, tuple[int, int] | tuple[None, None]]:
    # Keyed by object identity: messages come from DBCs loaded once and kept for the process.
    cached = _BOUNDS.get(id(message))
    if cached is None:
        cached = {}
        for signal in message.signals:
            if signal.is_float:
                cached[signal.name] = (None, None)
            elif signal.is_signed:
                half = 1 << (signal.length - 1)
                cached[signal.name] = (-half, half - 1)
            else:
                cached[signal.name] = (0, (1 << signal.length) - 1)
        _BOUNDS[id(message)] = cached
    return cached


def _rest_values(message: Message) -> dict[str, int | float]:
    values: dict[str, int | float] = {}
    for signal in message.signals:
        minimum = signal.minimum
        raw: int | float = 0
        if minimum is not None and minimum > signal.offset:
            raw = (float(minimum) - float(signal.offset)) / float(signal.scale)
            raw = raw if signal.is_float else math.ceil(raw)
        values[signal.name] = raw
    return values


def _other_raw(immobilizer: Immobilizer) -> int:
    signal = immobilizer.status_signal
    return next(r for r in range(1 << signal.length) if r not in immobilizer.immobilized_raw)
