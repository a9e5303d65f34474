"""Command signing keys and the signer, and the lifecycle rules (pure)."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.commands.errors import SigningKeyError
from gateway.commands.lifecycle import (
    FINAL,
    ResultEffect,
    Status,
    effect_of_result,
    expected_lock_state,
    is_success,
    stream_ends,
)
from gateway.commands.signing import (
    CommandSigner,
    create_key_pair,
    load_public_key,
    load_signing_key,
)
from schemas import CommandAction, CommandMessage, CommandOutcome

VIN = "WBAUF11080E123456"
NOW_MS = 1_748_851_170_000


def _sign(signer: CommandSigner, vin: str = VIN) -> CommandMessage:
    return signer.sign(
        command_id=uuid.uuid4(),
        vin=vin,
        action=CommandAction.UNLOCK,
        issued_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + 30_000,
        nonce=os.urandom(16).hex(),
    )


def test_signed_command_verifies_with_the_public_key_and_round_trips(tmp_path: Path) -> None:
    files = create_key_pair(tmp_path, "fleet-1")
    signer = CommandSigner(load_signing_key(files.private_path))
    command = _sign(signer)
    # What the car does: parse the JSON it received, verify over the canonical bytes.
    received = CommandMessage.model_validate_json(command.model_dump_json())
    public = load_public_key(files.public_path)
    public.verify(base64.b64decode(received.signature), received.signing_bytes())
    assert received.key_id == "fleet-1"
    assert bytes.fromhex(files.public_hex) == public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_any_changed_field_breaks_the_signature(tmp_path: Path) -> None:
    files = create_key_pair(tmp_path, "fleet-1")
    command = _sign(CommandSigner(load_signing_key(files.private_path)))
    public = load_public_key(files.public_path)
    for change in (
        {"action": CommandAction.UNLOCK_AND_ENABLE_DRIVING},
        {"expires_at": command.expires_at + 600_000 - 30_000},
        {"vin": "WVWZZZ1JZXW000001"},
        {"nonce": "0" * 32},
    ):
        forged = command.model_copy(update=change)
        with pytest.raises(InvalidSignature):
            public.verify(base64.b64decode(forged.signature), forged.signing_bytes())


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    files = create_key_pair(tmp_path, "fleet-1")
    files.private_path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_signing_key(files.private_path)


def test_missing_or_malformed_keys_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="tgw keys create"):
        load_signing_key(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    bad.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_signing_key(bad)
    with pytest.raises(SigningKeyError, match="key id"):
        create_key_pair(tmp_path, "has space")


def test_key_material_never_shows_in_reprs_or_logs(tmp_path: Path) -> None:
    files = create_key_pair(tmp_path, "fleet-1")
    key = load_signing_key(files.private_path)
    pem = files.private_path.read_text()
    secret_lines = [line for line in pem.splitlines() if "PRIVATE" not in line]
    raw = key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    with structlog.testing.capture_logs() as logs:
        signer = CommandSigner(key)
        _sign(signer)
    shown = repr(key) + repr(signer) + repr(logs)
    assert all(line not in shown for line in secret_lines)
    assert raw.hex() not in shown
    assert "fleet-1" in repr(key)


def test_a_car_with_its_own_key_is_signed_with_it(tmp_path: Path) -> None:
    fleet = create_key_pair(tmp_path / "fleet", "fleet-1")
    per_car = tmp_path / "cars"
    per_car.mkdir()
    private = Ed25519PrivateKey.generate()
    car_key = per_car / f"{VIN}.key"
    car_key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    car_key.chmod(0o600)
    signer = CommandSigner(load_signing_key(fleet.private_path), per_car)
    own = _sign(signer)
    assert own.key_id.startswith(f"{VIN}-")
    private.public_key().verify(base64.b64decode(own.signature), own.signing_bytes())
    other = _sign(signer, vin="WVWZZZ1JZXW000001")
    assert other.key_id == "fleet-1"


def test_result_effects() -> None:
    accepted, executed = CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED
    assert effect_of_result(Status.SENT, accepted) is ResultEffect.APPLY
    assert effect_of_result(Status.QUEUED, accepted) is ResultEffect.APPLY  # died before commit
    assert effect_of_result(Status.ACCEPTED, accepted) is ResultEffect.DUPLICATE
    assert effect_of_result(Status.ACCEPTED, executed) is ResultEffect.APPLY
    assert effect_of_result(Status.EXECUTED, accepted) is ResultEffect.STALE
    assert effect_of_result(Status.VERIFIED, executed) is ResultEffect.DUPLICATE
    assert effect_of_result(Status.EXPIRED, accepted) is ResultEffect.LATE
    assert effect_of_result(Status.TIMED_OUT, executed) is ResultEffect.LATE
    assert effect_of_result(Status.REJECTED, executed) is ResultEffect.CONFLICT
    assert effect_of_result(Status.ACCEPTED, CommandOutcome.REJECTED) is ResultEffect.CONFLICT
    # Nothing ever leaves a final state through a result, except executed's duplicates.
    for final in FINAL:
        for outcome in CommandOutcome:
            assert effect_of_result(final, outcome) is not ResultEffect.APPLY


def test_verification_and_stream_rules() -> None:
    assert expected_lock_state(CommandAction.LOCK) is True
    assert expected_lock_state(CommandAction.UNLOCK_AND_ENABLE_DRIVING) is False
    assert expected_lock_state(CommandAction.REQUEST_STATE) is None
    assert not stream_ends(Status.EXECUTED, CommandAction.LOCK)  # verified may follow
    assert stream_ends(Status.EXECUTED, CommandAction.REQUEST_STATE)
    assert stream_ends(Status.EXPIRED, CommandAction.LOCK)
    assert is_success(Status.VERIFIED)
    assert not is_success(Status.TIMED_OUT)
