"""Status messages: the retained birth, the last will and the orderly disconnect."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import CommandAction, StatusMessage, StatusReason

pytestmark = pytest.mark.unit

NOW = 1_748_851_200_000
BIRTH: dict[str, Any] = {
    "v": 1,
    "vin": "WBAUF11080E123456",
    "online": True,
    "reason": "connected",
    "ts": NOW,
    "boot_id": "b00t",
    "capabilities": ["lock", "unlock"],
}
WILL: dict[str, Any] = {
    "v": 1,
    "vin": "WBAUF11080E123456",
    "online": False,
    "reason": "connection_lost",
    "ts": NOW,
}


def parse(document: dict[str, Any]) -> StatusMessage:
    return StatusMessage.model_validate_json(json.dumps(document))


def without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


@given(
    online=st.booleans(),
    reason=st.sampled_from(list(StatusReason)),
    with_boot_id=st.booleans(),
    with_capabilities=st.booleans(),
)
def test_status_rules(
    online: bool, reason: StatusReason, with_boot_id: bool, with_capabilities: bool
) -> None:
    document: dict[str, Any] = {
        "v": 1,
        "vin": "WBAUF11080E123456",
        "online": online,
        "reason": reason.value,
        "ts": NOW,
    }
    if with_boot_id:
        document["boot_id"] = "b00t"
    if with_capabilities:
        document["capabilities"] = ["lock"]
    valid = online == (reason is StatusReason.CONNECTED) and (
        not online or (with_boot_id and with_capabilities)
    )
    try:
        parse(document)
    except ValidationError:
        assert not valid
    else:
        assert valid


def test_a_birth_needs_boot_id_and_capabilities() -> None:
    assert parse(BIRTH).online
    with pytest.raises(ValidationError, match="carries boot_id and capabilities"):
        parse(without(BIRTH, "boot_id"))
    with pytest.raises(ValidationError, match="carries boot_id and capabilities"):
        parse(without(BIRTH, "capabilities"))


def test_a_birth_may_list_no_capabilities() -> None:
    # A box that executes no commands says so with an empty list.
    assert parse(BIRTH | {"capabilities": []}).capabilities == ()


@pytest.mark.parametrize("reason", ["connection_lost", "disconnected"])
def test_online_is_true_exactly_when_connected(reason: str) -> None:
    with pytest.raises(ValidationError, match="online is true exactly when reason is 'connected'"):
        parse(BIRTH | {"reason": reason})
    with pytest.raises(ValidationError, match="online is true exactly when reason is 'connected'"):
        parse(WILL | {"reason": "connected"})


@pytest.mark.parametrize("reason", ["connection_lost", "disconnected"])
def test_a_will_or_goodbye_needs_no_boot_id(reason: str) -> None:
    message = parse(WILL | {"reason": reason})
    assert not message.online
    assert message.boot_id is None


def test_capabilities_are_command_actions() -> None:
    every = [action.value for action in CommandAction]
    assert parse(BIRTH | {"capabilities": every}).capabilities == tuple(CommandAction)
    with pytest.raises(ValidationError, match="capabilities"):
        parse(BIRTH | {"capabilities": ["open_sunroof"]})


@pytest.mark.parametrize("model", ["bmw_e8x", "vw_mqb", "x"])
def test_model_names_are_lowercase_identifiers(model: str) -> None:
    assert parse(BIRTH | {"model": model}).model == model


@pytest.mark.parametrize("model", ["BMW_E8X", "bmw e8x", "bmw-e8x", "", "x" * 65])
def test_other_model_names_are_refused(model: str) -> None:
    with pytest.raises(ValidationError, match="model"):
        parse(BIRTH | {"model": model})


@given(st.text(max_size=64).filter(lambda s: not any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)))
def test_firmware_is_free_text(firmware: str) -> None:
    assert parse(BIRTH | {"firmware": firmware}).firmware == firmware


@pytest.mark.parametrize("firmware", ["x" * 65, "2.4\n", "2.4\x00", "\x1b[31mred"])
def test_firmware_refuses_long_text_and_control_characters(firmware: str) -> None:
    with pytest.raises(ValidationError, match="firmware"):
        parse(BIRTH | {"firmware": firmware})
