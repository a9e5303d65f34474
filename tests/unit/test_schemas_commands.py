"""Commands (deadline, signing bytes, signatures) and command results (the reason rules)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    REJECTION_REASONS,
    CommandAction,
    CommandMessage,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Precondition,
    canonical_signing_bytes,
)
from schemas.limits import MAX_COMMAND_TTL_MS, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS

pytestmark = pytest.mark.unit

NOW = 1_748_851_200_000
VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
# RFC 8032 section 7.1 TEST 1: a published key, fine for tests and nothing else.
TEST_KEY = Ed25519PrivateKey.from_private_bytes(
    bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
)
COMMAND: dict[str, Any] = {
    "v": 1,
    "command_id": "0d9f6c4e-2b71-4f3a-9a8e-5c1b7d2e4f60",
    "vin": "WBAUF11080E123456",
    "action": "unlock",
    "issued_at": NOW,
    "expires_at": NOW + 60_000,
    "nonce": "8c1f4e2a9b7d3c6e5f0a1b2c3d4e5f60",
    "key_id": "tgw-2025-06",
    "signature": "AAAA",
}


def command(**changes: Any) -> CommandMessage:
    return CommandMessage.model_validate_json(json.dumps(COMMAND | changes))


def signed(**changes: Any) -> CommandMessage:
    unsigned = command(**changes)
    signature = base64.b64encode(TEST_KEY.sign(unsigned.signing_bytes())).decode()
    return command(**changes, signature=signature)


def verify(message: CommandMessage) -> None:
    signature = base64.b64decode(message.signature, validate=True)
    TEST_KEY.public_key().verify(signature, message.signing_bytes())


@st.composite
def _command_documents(draw: st.DrawFn) -> dict[str, Any]:
    issued_at = draw(st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - MAX_COMMAND_TTL_MS))
    return {
        "v": 1,
        "command_id": str(draw(st.uuids())),
        "vin": draw(st.text(VIN_ALPHABET, min_size=17, max_size=17)),
        "action": draw(st.sampled_from([action.value for action in CommandAction])),
        "issued_at": issued_at,
        "expires_at": issued_at + draw(st.integers(1, MAX_COMMAND_TTL_MS)),
        "nonce": draw(st.binary(min_size=16, max_size=32)).hex(),
        "key_id": draw(st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")),
        "signature": base64.b64encode(draw(st.binary(min_size=1, max_size=128))).decode(),
    }


command_documents = _command_documents()


# --------------------------------------------------------------------------------------------
# The deadline
# --------------------------------------------------------------------------------------------


@given(st.integers(-MAX_COMMAND_TTL_MS, 2 * MAX_COMMAND_TTL_MS))
def test_a_command_lives_more_than_0_and_at_most_10_minutes(ttl: int) -> None:
    try:
        command(expires_at=NOW + ttl)
    except ValidationError as exc:
        message = str(exc)
    else:
        assert 0 < ttl <= MAX_COMMAND_TTL_MS
        return
    assert not 0 < ttl <= MAX_COMMAND_TTL_MS
    assert "expires_at" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", "8C1F4E2A9B7D3C6E5F0A1B2C3D4E5F60"),  # uppercase
        ("nonce", "8c1f4e2a9b7d3c6e5f0a1b2c3d4e5f6"),  # 31 digits: under 128 bits
        ("nonce", "8c1f4e2a9b7d3c6e5f0a1b2c3d4e5f60" * 2 + "0"),
        ("key_id", ""),
        ("key_id", "key id"),
        ("signature", "not base64!"),
        ("signature", ""),
        ("action", "open_sunroof"),
        ("command_id", "0d9f6c4e"),
        ("vin", "WBAUF11080E12345"),
        ("issued_at", float(NOW)),
    ],
)
def test_command_fields_are_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        command(**{field: value})


# --------------------------------------------------------------------------------------------
# Signing bytes
# --------------------------------------------------------------------------------------------


@given(command_documents)
def test_signing_bytes_are_canonical_json_of_everything_but_the_signature(
    document: dict[str, Any],
) -> None:
    message = CommandMessage.model_validate_json(json.dumps(document))
    expected = json.dumps(
        {k: v for k, v in document.items() if k != "signature"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    assert message.signing_bytes() == expected
    assert b"signature" not in message.signing_bytes()
    assert b" " not in message.signing_bytes()


@given(command_documents, st.randoms(use_true_random=False))
def test_signing_bytes_do_not_depend_on_key_order_or_layout(
    document: dict[str, Any], rnd: Any
) -> None:
    keys = list(document)
    rnd.shuffle(keys)
    shuffled = json.dumps({k: document[k] for k in keys}, indent=rnd.choice([None, 2]))
    assert (
        CommandMessage.model_validate_json(shuffled).signing_bytes()
        == CommandMessage.model_validate_json(json.dumps(document)).signing_bytes()
    )


@given(command_documents, st.binary(min_size=1, max_size=64))
def test_the_signature_is_not_signed(document: dict[str, Any], other: bytes) -> None:
    message = CommandMessage.model_validate_json(json.dumps(document))
    resigned = CommandMessage.model_validate_json(
        json.dumps(document | {"signature": base64.b64encode(other).decode()})
    )
    assert resigned.signing_bytes() == message.signing_bytes()


@given(command_documents)
def test_signing_bytes_survive_a_round_trip_through_json(document: dict[str, Any]) -> None:
    message = CommandMessage.model_validate_json(json.dumps(document))
    again = CommandMessage.model_validate_json(message.model_dump_json())
    assert again == message
    assert again.signing_bytes() == message.signing_bytes()


def test_signing_bytes_of_a_known_command() -> None:
    # The same bytes docs/protocol.md section 9.3 shows; a box's canonicaliser must agree.
    assert command().signing_bytes() == (
        b'{"action":"unlock","command_id":"0d9f6c4e-2b71-4f3a-9a8e-5c1b7d2e4f60",'
        b'"expires_at":1748851260000,"issued_at":1748851200000,"key_id":"tgw-2025-06",'
        b'"nonce":"8c1f4e2a9b7d3c6e5f0a1b2c3d4e5f60","v":1,"vin":"WBAUF11080E123456"}'
    )


def test_canonical_signing_bytes_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_signing_bytes({"b": 1, "a": "x y"}) == b'{"a":"x y","b":1}'
    assert canonical_signing_bytes({"é": "ü"}) == '{"é":"ü"}'.encode()  # UTF-8, not \u escapes


# --------------------------------------------------------------------------------------------
# Ed25519 end to end
# --------------------------------------------------------------------------------------------


def test_a_signed_command_verifies() -> None:
    message = signed()
    assert len(base64.b64decode(message.signature)) == 64
    verify(message)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "unlock_and_enable_driving"),
        ("vin", "WBA3A5C51CF256985"),
        ("expires_at", NOW + 600_000),
        ("nonce", "0" * 32),
        ("command_id", "5b2e8f14-7c3d-4a96-b1e0-9d4c2a6f8e37"),
        ("key_id", "tgw-2025-07"),
    ],
)
def test_changing_any_signed_field_breaks_the_signature(field: str, value: object) -> None:
    original = signed()
    tampered = command(**{field: value}, signature=original.signature)
    with pytest.raises(InvalidSignature):
        verify(tampered)


# --------------------------------------------------------------------------------------------
# Command results: the reason rules
# --------------------------------------------------------------------------------------------

RESULT: dict[str, Any] = {
    "v": 1,
    "command_id": "0d9f6c4e-2b71-4f3a-9a8e-5c1b7d2e4f60",
    "vin": "WBAUF11080E123456",
    "ts": NOW,
}


def _result_is_valid(
    outcome: CommandOutcome, reason: CommandReason | None, preconditions: list[str]
) -> bool:
    if outcome in (CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED):
        reason_ok = reason is None
    elif outcome is CommandOutcome.REJECTED:
        reason_ok = reason in REJECTION_REASONS
    else:
        reason_ok = reason is not None
    preconditions_ok = bool(preconditions) == (reason is CommandReason.PRECONDITION_FAILED)
    return reason_ok and preconditions_ok


@given(
    outcome=st.sampled_from(list(CommandOutcome)),
    reason=st.none() | st.sampled_from(list(CommandReason)),
    preconditions=st.lists(st.sampled_from([p.value for p in Precondition]), unique=True),
)
def test_reason_rules(
    outcome: CommandOutcome, reason: CommandReason | None, preconditions: list[str]
) -> None:
    document = RESULT | {"outcome": outcome.value}
    if reason is not None:
        document["reason"] = reason.value
    if preconditions:
        document["failed_preconditions"] = preconditions
    try:
        CommandResultMessage.model_validate_json(json.dumps(document))
    except ValidationError:
        assert not _result_is_valid(outcome, reason, preconditions)
    else:
        assert _result_is_valid(outcome, reason, preconditions)


def test_the_rejection_reasons() -> None:
    assert {CommandReason.CAN_TIMEOUT, CommandReason.CAN_ERROR} == set(
        CommandReason
    ) - REJECTION_REASONS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outcome": "accepted", "reason": "busy"}, "an accepted result carries no reason"),
        ({"outcome": "rejected"}, "a rejected result says why"),
        ({"outcome": "failed"}, "a failed result says why"),
        ({"outcome": "rejected", "reason": "can_timeout"}, "can_timeout is not a reason to reject"),
        (
            {"outcome": "rejected", "reason": "precondition_failed"},
            "name the preconditions that failed",
        ),
        (
            {"outcome": "rejected", "reason": "busy", "failed_preconditions": ["doors_closed"]},
            "only with reason precondition_failed",
        ),
    ],
)
def test_reason_errors_say_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CommandResultMessage.model_validate_json(json.dumps(RESULT | changes))


def test_a_result_may_carry_the_state_read_back() -> None:
    document = RESULT | {"outcome": "executed", "state": {"locked": False, "door_fl_open": False}}
    parsed = CommandResultMessage.model_validate_json(json.dumps(document))
    assert parsed.state is not None
    assert parsed.state.present() == {"locked": False, "door_fl_open": False}
    with pytest.raises(ValidationError, match="state"):
        CommandResultMessage.model_validate_json(json.dumps(document | {"state": {}}))


@pytest.mark.parametrize("detail", ["x" * 501, "line\nbreak", "\x00"])
def test_detail_is_short_plain_text(detail: str) -> None:
    document = RESULT | {"outcome": "failed", "reason": "can_error", "detail": detail}
    with pytest.raises(ValidationError, match="detail"):
        CommandResultMessage.model_validate_json(json.dumps(document))
