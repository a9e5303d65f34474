"""Command checks on the car: parse, signature port, VIN, replay, deadline, busy, preconditions."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from device_sim.commands import (
    CommandGate,
    StructureOnlyVerifier,
    UnreadableCommand,
    failed_preconditions,
    parse_command,
)
from schemas.commands import CommandAction, CommandMessage, CommandReason, Precondition

pytestmark = pytest.mark.unit

VIN = "WBA12345678901234"
NOW = 1_800_000_000_000
PARKED: dict[str, float | bool] = {
    "door_fl_open": False, "door_fr_open": False, "door_rl_open": False, "door_rr_open": False,
    "trunk_open": False, "ignition": False, "speed": 0.0, "locked": False,
}  # fmt: skip


def _command(**overrides: Any) -> CommandMessage:
    fields: dict[str, Any] = {
        "v": 1,
        "command_id": str(uuid.uuid4()),
        "vin": VIN,
        "action": "lock",
        "issued_at": NOW - 1_000,
        "expires_at": NOW + 30_000,
        "nonce": uuid.uuid4().hex,
        "key_id": "gw-1",
        "signature": "c2lnbmF0dXJl",
    }
    fields.update(overrides)
    return CommandMessage.model_validate_json(json.dumps(fields))


class _Memory:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def command_seen(self, command_id: str, nonce: str) -> bool:
        return command_id in self.seen or nonce in self.seen

    def remember_command(self, command_id: str, nonce: str, expires_at: int) -> None:
        self.seen |= {command_id, nonce}


class _RefusingVerifier:
    def verify(self, command: CommandMessage) -> bool:
        return False


def _gate(memory: _Memory | None = None, verifier: Any = None) -> CommandGate:
    return CommandGate(
        vin=VIN,
        capabilities=(CommandAction.LOCK, CommandAction.UNLOCK, CommandAction.REQUEST_STATE),
        verifier=verifier or StructureOnlyVerifier(),
        memory=memory or _Memory(),
    )


def test_a_good_command_passes() -> None:
    assert _gate().check(_command(), now_ms=NOW, busy=False, values=PARKED) is None


@pytest.mark.parametrize(
    ("command", "busy", "values", "reason"),
    [
        (_command(vin="WVW12345678901234"), False, PARKED, CommandReason.WRONG_VEHICLE),
        (_command(expires_at=NOW, issued_at=NOW - 5), False, PARKED, CommandReason.EXPIRED),
        (_command(action="lock_and_disable_driving"), False, PARKED, CommandReason.UNSUPPORTED),
        (_command(), True, PARKED, CommandReason.BUSY),
        (_command(), False, {**PARKED, "door_rr_open": True}, CommandReason.PRECONDITION_FAILED),
    ],
    ids=["wrong vehicle", "expired", "unsupported", "busy", "door open"],
)
def test_rejections(
    command: CommandMessage, busy: bool, values: dict[str, Any], reason: CommandReason
) -> None:
    rejection = _gate().check(command, now_ms=NOW, busy=busy, values=values)
    assert rejection is not None
    assert rejection.reason is reason


def test_a_command_taken_once_is_a_replay_after() -> None:
    memory = _Memory()
    gate = _gate(memory)
    command = _command()
    assert gate.check(command, now_ms=NOW, busy=False, values=PARKED) is None
    gate.take(command)
    rejection = gate.check(command, now_ms=NOW, busy=False, values=PARKED)
    assert rejection is not None
    assert rejection.reason is CommandReason.REPLAY
    # The same nonce under a new command id is a replay as well.
    reused = _command(nonce=command.nonce)
    again = gate.check(reused, now_ms=NOW, busy=False, values=PARKED)
    assert again is not None
    assert again.reason is CommandReason.REPLAY


def test_the_verifier_is_asked_first() -> None:
    gate = _gate(verifier=_RefusingVerifier())
    rejection = gate.check(_command(vin="WVW12345678901234"), now_ms=NOW, busy=True, values={})
    assert rejection is not None
    assert rejection.reason is CommandReason.BAD_SIGNATURE


def test_the_default_verifier_checks_structure_only() -> None:
    # Documented placeholder: it accepts any signature (verification comes with issue 5).
    assert StructureOnlyVerifier().verify(_command(signature="AAAA")) is True


@pytest.mark.parametrize(
    ("action", "values", "failed"),
    [
        ("lock", PARKED, ()),
        (
            "lock",
            {**PARKED, "door_fl_open": True, "ignition": True},
            ("doors_closed", "ignition_off"),
        ),
        ("lock", {**PARKED, "trunk_open": True}, ("trunk_closed",)),
        ("lock", {}, ("doors_closed", "trunk_closed", "ignition_off")),
        ("lock_and_disable_driving", {**PARKED, "speed": 12.0}, ("stationary",)),
        ("unlock", {**PARKED, "door_fl_open": True, "ignition": True}, ()),
        ("request_state", {}, ()),
    ],
)
def test_preconditions(action: str, values: dict[str, Any], failed: tuple[str, ...]) -> None:
    result = failed_preconditions(CommandAction(action), values)
    assert result == tuple(Precondition(name) for name in failed)


def test_unreadable_commands_keep_their_id_when_they_can() -> None:
    command_id = uuid.uuid4()
    parsed = parse_command(json.dumps({"command_id": str(command_id), "vin": VIN}).encode())
    assert isinstance(parsed, UnreadableCommand)
    assert parsed.command_id == command_id
    assert parsed.detail
    garbage = parse_command(b"\xff\x00not json")
    assert isinstance(garbage, UnreadableCommand)
    assert garbage.command_id is None
    assert isinstance(parse_command(_command().model_dump_json().encode()), CommandMessage)
