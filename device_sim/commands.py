"""Commands on the car: check, then act on the CAN bus and confirm by reading back.

The checks, in order (the first that fails is the reason):
  1. malformed           the payload is not a valid CommandMessage
  2. bad_signature       the `CommandVerifier` refuses it
  3. wrong_vehicle       it names another VIN
  4. replay              its command id or nonce was taken before (remembered on disk);
                         the unit answers a command id it has seen with the results it
                         sent for it (a QoS 1 redelivery), and `replay` only a reused nonce
  5. expired             expires_at has passed on the car's clock
  6. unsupported         the car's profile cannot do the action
  7. busy                another command is executing
  8. precondition_failed lock: all doors and the trunk closed, ignition off;
                         disabling driving also needs the car stationary

SIGNATURES ARE NOT VERIFIED YET. `StructureOnlyVerifier`, the default verifier, checks
structure only (the model already did) and accepts every signature; Ed25519 verification
against the car's provisioned key arrives with the commands issue (issue 5) as another
`CommandVerifier`. Nothing here pretends otherwise.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import can
import structlog
from pydantic import ValidationError

from device_sim.canbus import FrameBus
from device_sim.codec import WireValue, encode_frame
from device_sim.errors import CanBusError
from device_sim.profiles import SignalProfile
from device_sim.tracker import SignalTracker
from schemas.commands import (
    CommandAction,
    CommandMessage,
    CommandReason,
    Precondition,
)

__all__ = [
    "CommandExecutor",
    "CommandGate",
    "CommandMemory",
    "CommandVerifier",
    "ExecutionResult",
    "Rejection",
    "StructureOnlyVerifier",
    "UnreadableCommand",
    "failed_preconditions",
    "parse_command",
]

_log = structlog.get_logger(__name__)

_DOOR_SIGNALS = ("door_fl_open", "door_fr_open", "door_rl_open", "door_rr_open")
_STATIONARY_KMH = 0.5
_LOCKING_ACTIONS = frozenset({CommandAction.LOCK, CommandAction.LOCK_AND_DISABLE_DRIVING})


class CommandVerifier(Protocol):
    """Decides whether a command really comes from the gateway (the port for signatures)."""

    def verify(self, command: CommandMessage) -> bool:
        """True if the command's signature is good for this car."""


class StructureOnlyVerifier:
    """Accepts every well-formed command: it does NOT check the signature.

    A placeholder until the commands issue (issue 5) provisions per-car keys and adds an
    Ed25519 `CommandVerifier`. Until then a stolen broker password can command a car.
    """

    def __init__(self) -> None:
        self._warned = False

    def verify(self, command: CommandMessage) -> bool:
        if not self._warned:
            self._warned = True
            _log.warning(
                "command_signatures_not_verified",
                verifier="StructureOnlyVerifier",
                why="signature verification arrives with the commands issue",
            )
        return True


class CommandMemory(Protocol):
    """Durable memory of the commands a car has taken (VehicleOutbox implements it)."""

    def command_seen(self, command_id: str, nonce: str) -> bool: ...

    def remember_command(self, command_id: str, nonce: str, expires_at: int) -> None: ...


@dataclass(frozen=True, slots=True)
class UnreadableCommand:
    """A payload that is not a valid command; `command_id` is set when one could be read."""

    command_id: UUID | None
    detail: str


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: CommandReason
    failed_preconditions: tuple[Precondition, ...] = ()
    detail: str | None = None


def parse_command(payload: bytes) -> CommandMessage | UnreadableCommand:
    """Validate a command payload; on failure, salvage the command id so the car can answer."""
    try:
        return CommandMessage.model_validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        where = ".".join(str(part) for part in first["loc"]) or "(message)"
        detail = f"{where}: {first['msg']}"[:500]
        return UnreadableCommand(_salvage_command_id(payload), detail)


def _salvage_command_id(payload: bytes) -> UUID | None:
    try:
        document = json.loads(payload)
        return UUID(str(document["command_id"])) if isinstance(document, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def failed_preconditions(
    action: CommandAction, values: Mapping[str, WireValue]
) -> tuple[Precondition, ...]:
    """The preconditions `action` needs that the car's current state does not meet.

    A signal the car has not reported yet counts as not met: the safe answer.
    """
    if action not in _LOCKING_ACTIONS:
        return ()
    failed: list[Precondition] = []
    if any(values.get(door) is not False for door in _DOOR_SIGNALS):
        failed.append(Precondition.DOORS_CLOSED)
    if values.get("trunk_open") is not False:
        failed.append(Precondition.TRUNK_CLOSED)
    if values.get("ignition") is not False:
        failed.append(Precondition.IGNITION_OFF)
    if action is CommandAction.LOCK_AND_DISABLE_DRIVING:
        speed = values.get("speed")
        if not isinstance(speed, float) or speed > _STATIONARY_KMH:
            failed.append(Precondition.STATIONARY)
    return tuple(failed)


class CommandGate:
    """Every check a command passes before the car acts on it (see the module docstring)."""

    def __init__(
        self,
        *,
        vin: str,
        capabilities: tuple[CommandAction, ...],
        verifier: CommandVerifier,
        memory: CommandMemory,
    ) -> None:
        self._vin = vin
        self._capabilities = frozenset(capabilities)
        self._verifier = verifier
        self._memory = memory

    def check(  # noqa: PLR0911  (one return per check, in the documented order)
        self,
        command: CommandMessage,
        *,
        now_ms: int,
        busy: bool,
        values: Mapping[str, WireValue],
    ) -> Rejection | None:
        """The reason to reject `command`, or None to take it."""
        if not self._verifier.verify(command):
            return Rejection(CommandReason.BAD_SIGNATURE)
        if command.vin != self._vin:
            return Rejection(CommandReason.WRONG_VEHICLE, detail=f"this car is {self._vin}")
        if self._memory.command_seen(str(command.command_id), command.nonce):
            return Rejection(CommandReason.REPLAY, detail="command id or nonce taken before")
        if command.expires_at <= now_ms:
            late = (now_ms - command.expires_at) / 1000
            return Rejection(CommandReason.EXPIRED, detail=f"expired {late:.1f} s ago")
        if command.action not in self._capabilities:
            can_do = ", ".join(sorted(self._capabilities))
            return Rejection(CommandReason.UNSUPPORTED, detail=f"this car can: {can_do}")
        if busy:
            return Rejection(CommandReason.BUSY, detail="another command is executing")
        failed = failed_preconditions(command.action, values)
        if failed:
            return Rejection(CommandReason.PRECONDITION_FAILED, failed_preconditions=failed)
        return None

    def take(self, command: CommandMessage) -> None:
        """Remember the command durably; call before acting on it."""
        self._memory.remember_command(str(command.command_id), command.nonce, command.expires_at)


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """How executing went: None reason means executed (and confirmed by read-back)."""

    reason: CommandReason | None
    detail: str | None = None


class CommandExecutor:
    """Writes central-locking and immobilizer frames and confirms them by reading back."""

    def __init__(
        self,
        profile: SignalProfile,
        bus: FrameBus,
        tracker: SignalTracker,
        *,
        confirm_timeout_s: float,
    ) -> None:
        self._profile = profile
        self._bus = bus
        self._tracker = tracker
        self._confirm_timeout_s = confirm_timeout_s
        self._counter = 0

    async def execute(self, command: CommandMessage) -> ExecutionResult:
        action = command.action
        if action is CommandAction.REQUEST_STATE:
            return ExecutionResult(None)
        steps: list[tuple[str, bool]] = []  # ("lock"|"immobilizer", target state)
        if action in (CommandAction.LOCK, CommandAction.LOCK_AND_DISABLE_DRIVING):
            steps.append(("lock", True))
        if action in (CommandAction.UNLOCK, CommandAction.UNLOCK_AND_ENABLE_DRIVING):
            steps.append(("lock", False))
        if action is CommandAction.LOCK_AND_DISABLE_DRIVING:
            steps.append(("immobilizer", True))
        if action is CommandAction.UNLOCK_AND_ENABLE_DRIVING:
            steps.append(("immobilizer", False))
        for step, target in steps:
            result = await self._step(step, target, command.command_id)
            if result.reason is not None:
                return result
        return ExecutionResult(None)

    async def _step(self, step: str, target: bool, command_id: UUID) -> ExecutionResult:
        tracker = self._tracker
        if step == "lock":
            tracker.expect_lock(locked=target, command_id=command_id)
            frame = self._lock_frame(target)
            done = functools.partial(_lock_reads, target)
            what = "lock state"
        else:
            frame = self._immobilizer_frame(target)
            done = functools.partial(_immobilizer_reads, target)
            what = "immobilizer state"
        try:
            self._bus.send(frame)
        except CanBusError as exc:
            tracker.clear_lock_intent()
            return ExecutionResult(CommandReason.CAN_ERROR, str(exc)[:500])
        if await tracker.wait_for(done, self._confirm_timeout_s):
            return ExecutionResult(None)
        tracker.clear_lock_intent()
        return ExecutionResult(
            CommandReason.CAN_TIMEOUT,
            f"the body controller did not confirm the {what} within {self._confirm_timeout_s} s",
        )

    def _next_counter(self) -> int:
        self._counter = (self._counter + 1) % 16
        return self._counter

    def _lock_frame(self, lock: bool) -> can.Message:
        locking = self._profile.central_locking
        assert locking is not None  # the gate refused the action otherwise
        raw: dict[str, int | float] = {s.name: 0 for s in locking.message.signals}
        raw[locking.signal.name] = locking.lock_raw if lock else locking.unlock_raw
        if locking.counter is not None:
            raw[locking.counter.name] = self._next_counter()
        return encode_frame(locking.message, raw)

    def _immobilizer_frame(self, immobilize: bool) -> can.Message:
        immobilizer = self._profile.immobilizer
        assert immobilizer is not None
        raw: dict[str, int | float] = {s.name: 0 for s in immobilizer.message.signals}
        raw[immobilizer.signal.name] = (
            immobilizer.immobilize_raw if immobilize else immobilizer.release_raw
        )
        if immobilizer.counter is not None:
            raw[immobilizer.counter.name] = self._next_counter()
        return encode_frame(immobilizer.message, raw)


def _lock_reads(target: bool, tracker: SignalTracker) -> bool:
    return tracker.values.get("locked") is target


def _immobilizer_reads(target: bool, tracker: SignalTracker) -> bool:
    return tracker.immobilized is target
