"""Ed25519 command verification on the car: the signature must come from a key it trusts.

The car trusts public keys by key id (`[commands.trusted_keys]` in its configuration, written by
`tgw provision`). A command names its key id; an unknown id, a malformed signature or one that
does not match `CommandMessage.signing_bytes()` is refused as `bad_signature`. During a key
rotation the car trusts both the old and the new key, so there is no moment it refuses the
gateway's commands.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_sim.commands import CommandVerifier, StructureOnlyVerifier
from device_sim.errors import DeviceConfigurationError
from schemas.commands import CommandMessage

__all__ = ["Ed25519Verifier", "parse_trusted_keys", "verifier_for"]

_ED25519_SIGNATURE_BYTES = 64


def parse_trusted_keys(trusted: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key, from hex-encoded raw 32-byte Ed25519 public keys.

    Raises:
        DeviceConfigurationError: a key is not 64 hex digits of a valid public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for key_id, public_hex in trusted.items():
        try:
            keys[key_id] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        except ValueError as exc:
            raise DeviceConfigurationError(
                f"trusted key {key_id!r} is not a raw Ed25519 public key in hex (64 digits)"
            ) from exc
    return keys


class Ed25519Verifier:
    """A `CommandVerifier` that accepts only signatures of the trusted keys."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey]) -> None:
        if not trusted:
            raise DeviceConfigurationError("an Ed25519 verifier needs at least one trusted key")
        self._trusted = dict(trusted)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._trusted))

    def verify(self, command: CommandMessage) -> bool:
        key = self._trusted.get(command.key_id)
        if key is None:
            return False
        try:
            signature = base64.b64decode(command.signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        if len(signature) != _ED25519_SIGNATURE_BYTES:
            return False
        try:
            key.verify(signature, command.signing_bytes())
        except InvalidSignature:
            return False
        return True


def verifier_for(trusted: Mapping[str, str]) -> CommandVerifier:
    """The car's verifier: Ed25519 over `trusted` keys; with none, the structure-only
    placeholder (it warns once, and accepts every well-formed command)."""
    if not trusted:
        return StructureOnlyVerifier()
    return Ed25519Verifier(parse_trusted_keys(trusted))
