"""Simulated ECUs: what a car of a given model puts on its CAN bus.

`VehicleState` is the physical truth of a simulated car (where it is, doors, lock, ...).
`SimulatedEcus` encodes that state into the model's frames (periodically, like real ECUs,
and at once after a change) and plays the body controller: it obeys the central-locking
and immobilizer requests the telematics unit writes, and answers with its status frames.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import can
import structlog
from cantools.database import Message
from cantools.database.errors import DecodeError

from device_sim.canbus import FrameBus
from device_sim.codec import FrameEncoder, WireValue
from device_sim.profiles import SignalMapping, SignalProfile

__all__ = ["BodyBehaviour", "SimulatedEcus", "VehicleState"]

_log = structlog.get_logger(__name__)

_DOOR_FIELDS = ("door_fl_open", "door_fr_open", "door_rl_open", "door_rr_open")


@dataclass(slots=True)
class VehicleState:
    """The physical state of a simulated car (wire units: degrees, km/h, %, km, V)."""

    lat: float = 48.137154
    lon: float = 11.576124
    heading: float = 0.0
    speed: float = 0.0
    fuel: float = 80.0
    soc: float = 80.0
    odometer: float = 10_000.0
    batt_v: float = 12.6
    ignition: bool = False
    locked: bool = True
    door_fl_open: bool = False
    door_fr_open: bool = False
    door_rl_open: bool = False
    door_rr_open: bool = False
    trunk_open: bool = False
    immobilized: bool = True  # not a wire signal: the immobilizer's own status frame carries it

    def wire_values(self) -> dict[str, WireValue]:
        """Every wire signal of this state, by wire name."""
        return {name: getattr(self, name) for name in _WIRE_FIELDS}

    @property
    def doors_closed(self) -> bool:
        return not any(getattr(self, name) for name in _DOOR_FIELDS)


_WIRE_FIELDS = tuple(f.name for f in fields(VehicleState) if f.name != "immobilized")


# The state as one tuple in one C call: the immobilizer first, then every wire signal.
_read_state: Callable[[VehicleState], tuple[Any, ...]] = operator.attrgetter(
    "immobilized", *_WIRE_FIELDS
)
_STATE_INDEX = {name: index for index, name in enumerate(_WIRE_FIELDS, start=1)}


@dataclass(frozen=True, slots=True)
class BodyBehaviour:
    """How the simulated body controller answers requests (fault injection for tests).

    Args:
        answers: False makes it ignore requests (the unit then reports a CAN timeout).
        delay_s: time the actuators take: the state changes (and is reported) this much later.
    """

    answers: bool = True
    delay_s: float = 0.0


class SimulatedEcus:
    """A car's ECUs on one bus (one node for all of them, as in a bench set-up).

    Args:
        profile: the vehicle model: which frames, how signals are encoded.
        state: the car's state; the owner mutates it and calls `send_changed()`.
        bus: the bus to send on and listen to.
        body: how the body controller answers requests.
        encoder: share one encoder between cars of a model (it is stateless).
    """

    def __init__(
        self,
        profile: SignalProfile,
        state: VehicleState,
        bus: FrameBus,
        *,
        body: BodyBehaviour | None = None,
        encoder: FrameEncoder | None = None,
    ) -> None:
        self.profile = profile
        self.state = state
        self.body = body or BodyBehaviour()
        self._bus = bus
        self._encoder = encoder or FrameEncoder(profile)
        # Per message: the mappings it carries, where their values are in `_read_state`'s
        # tuple, and which entries of that tuple it depends on (the immobilizer, at 0, always).
        self._inputs: list[
            tuple[Message, tuple[SignalMapping, ...], tuple[int, ...], frozenset[int]]
        ] = []
        for message in self._encoder.messages:
            mappings = self._encoder.mappings_of(message)
            indices = tuple(_STATE_INDEX[m.wire] for m in mappings)
            self._inputs.append((message, mappings, indices, frozenset((0, *indices))))
        self._last_state: tuple[Any, ...] | None = None  # at the last send_changed
        self._last_inputs: dict[int, tuple[object, ...]] = {}  # raw values last sent
        self.requests_seen = 0
        locking, immobilizer = profile.central_locking, profile.immobilizer
        self._request_ids: set[int] = set()
        if locking is not None:
            self._request_ids.add(locking.message.frame_id)
        if immobilizer is not None:
            self._request_ids.add(immobilizer.message.frame_id)
        bus.add_listener(self._on_frame)

    def close(self) -> None:
        """Stop listening to the bus (idempotent)."""
        self._bus.remove_listener(self._on_frame)

    def frames(self) -> list[can.Message]:
        """The frames for the current state, one per message of the profile."""
        values = self.state.wire_values()
        immobilized = self.state.immobilized
        return [
            self._encoder.encode(message, values, immobilized=immobilized)
            for message in self._encoder.messages
        ]

    def send_all(self) -> None:
        """Send every frame (one period of every periodic message)."""
        for frame in self.frames():
            self._bus.send(frame)
        self._last_state = None
        self._last_inputs.clear()

    def send_changed(self) -> int:
        """Send the frames whose content changed since they were last sent; return how many.

        Fleets call this every second for thousands of cars, so it is frugal: a message is
        looked at again only when one of its signals changed, and encoded and sent only when
        that change shows in its raw (quantised) values.
        """
        current = _read_state(self.state)
        previous = self._last_state
        if current == previous:
            return 0
        self._last_state = current
        changed = None
        if previous is not None:
            changed = {
                i
                for i, (now, before) in enumerate(zip(current, previous, strict=True))
                if now != before
            }
        immobilized = current[0]
        last_inputs = self._last_inputs
        encode_raw = self._encoder.encode_raw
        sent = 0
        for message, mappings, indices, watched in self._inputs:
            if changed is not None and watched.isdisjoint(changed):
                continue
            frame_id = message.frame_id
            raws = tuple(
                [m.wire_to_raw(current[i]) for m, i in zip(mappings, indices, strict=True)]
            )
            raw = (immobilized, raws)
            if last_inputs.get(frame_id) == raw:
                continue
            last_inputs[frame_id] = raw
            self._bus.send(encode_raw(message, raws, immobilized=immobilized))
            sent += 1
        return sent

    async def run_periodic(self, *, period_scale: float = 1.0) -> None:
        """Send each message at its period (DBC cycle time or the profile's), until cancelled."""
        loop = asyncio.get_running_loop()
        messages = self._encoder.messages
        periods = [self.profile.period_ms(m) / 1000 * period_scale for m in messages]
        due = [loop.time()] * len(messages)
        while True:
            now = loop.time()
            values = self.state.wire_values()
            for index, message in enumerate(messages):
                if due[index] <= now:
                    frame = self._encoder.encode(
                        message, values, immobilized=self.state.immobilized
                    )
                    self._bus.send(frame)
                    due[index] = max(due[index] + periods[index], now)
            await asyncio.sleep(max(0.0, min(due) - loop.time()))

    # -- the body controller ------------------------------------------------------------------

    def _on_frame(self, frame: can.Message) -> None:
        if frame.arbitration_id not in self._request_ids or frame.is_remote_frame:
            return
        self.requests_seen += 1
        if not self.body.answers:
            return
        if self.body.delay_s > 0:
            # The actuators take their time: the state changes (and is reported) later.
            asyncio.get_running_loop().call_later(self.body.delay_s, self._actuate, frame)
        else:
            self._actuate(frame)

    def _actuate(self, frame: can.Message) -> None:
        if self._apply_request(frame):
            self.send_changed()

    def _apply_request(self, frame: can.Message) -> bool:
        locking, immobilizer = self.profile.central_locking, self.profile.immobilizer
        applied = False
        if locking is not None and frame.arbitration_id == locking.message.frame_id:
            raw = _decode_raw(locking.message, frame)
            request = raw.get(locking.signal.name)
            if request == locking.lock_raw:
                self.state.locked, applied = True, True
            elif request == locking.unlock_raw:
                self.state.locked, applied = False, True
        if immobilizer is not None and frame.arbitration_id == immobilizer.message.frame_id:
            raw = _decode_raw(immobilizer.message, frame)
            request = raw.get(immobilizer.signal.name)
            if request == immobilizer.immobilize_raw:
                self.state.immobilized, applied = True, True
            elif request == immobilizer.release_raw:
                self.state.immobilized, applied = False, True
        # An obeyed request is answered even when nothing changed: the status frame confirms.
        if applied:
            self._last_state = None
            self._last_inputs.clear()
        return applied


def _decode_raw(message: Message, frame: can.Message) -> dict[str, object]:
    try:
        decoded = message.decode(bytes(frame.data), decode_choices=False, scaling=False)
    except (DecodeError, ValueError) as exc:
        _log.debug("body_request_undecodable", frame_id=frame.arbitration_id, error=str(exc))
        return {}
    return dict(decoded) if isinstance(decoded, dict) else {}
