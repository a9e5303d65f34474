"""Ed25519 command signing: the gateway's keys, and the signer that turns fields into a command.

Key files are PEM (PKCS#8, unencrypted) Ed25519 private keys readable by the gateway's user only
(mode 0600); a file readable by group or others is refused, as ssh does. Cars trust public keys by
`key_id` (docs/commands.md, "Keys"):

- the fleet key (`commands.signing_key_file`), `key_id` = `commands.signing_key_id` or the file's
  stem: signs every car's commands unless that car has a key of its own;
- per-car keys (`commands.vehicle_keys_dir/<VIN>.key`), `key_id` = `<VIN>-<fingerprint>`: the
  first 8 hex digits of the SHA-256 of the raw public key, so a rotated key gets a new id.

Key material never appears in logs or reprs: only `key_id` and the fingerprint do.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.commands.errors import SigningKeyError
from schemas import CommandAction, CommandMessage, parse_vin

__all__ = [
    "CommandSigner",
    "KeyPairFiles",
    "SigningKey",
    "create_key_pair",
    "fingerprint",
    "load_public_key",
    "load_signing_key",
]

_KEY_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_PLACEHOLDER_SIGNATURE = "AA=="


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how people and key ids name a key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _check_key_id(key_id: str) -> str:
    if not 1 <= len(key_id) <= 64 or not set(key_id) <= _KEY_ID_CHARS:
        raise SigningKeyError(
            f"key id {key_id!r} is not 1 to 64 characters from A-Z a-z 0-9 _ . - "
            "(protocol v1, section 9.2)"
        )
    return key_id


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private signing key and the id cars know its public half by."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_hex(self) -> str:
        """The raw public key as 64 hex digits: what a car's trust list holds."""
        return self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, data: bytes) -> str:
        """The standard base64 Ed25519 signature of `data`."""
        return base64.b64encode(self.private_key.sign(data)).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r}, fingerprint={self.fingerprint[:16]})"


def load_signing_key(path: Path, key_id: str | None = None) -> SigningKey:
    """Read a private key file; `key_id` defaults to the file's stem.

    Raises:
        SigningKeyError: missing, readable by others, or not an Ed25519 PEM private key.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(
            f"command signing key {path} does not exist: create one with "
            f"`tgw keys create --out {path.parent}`"
        ) from exc
    except OSError as exc:
        raise SigningKeyError(f"cannot read command signing key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"command signing key {path} is accessible to other users "
            f"(mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}`"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The exception text never contains key material, only what was wrong with the format.
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({exc.__class__.__name__})"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
    return SigningKey(_check_key_id(key_id or path.stem), private)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a public key file written by `create_key_pair` (PEM SubjectPublicKeyInfo)."""
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"cannot read public key {path}: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(public).__name__}, not an Ed25519 key")
    return public


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """What `create_key_pair` wrote."""

    key_id: str
    private_path: Path
    public_path: Path
    public_hex: str
    fingerprint: str


def create_key_pair(out_dir: Path, key_id: str) -> KeyPairFiles:
    """Write `<key_id>.key` (private, mode 0600) and `<key_id>.pub` (public) into `out_dir`.

    Refuses to overwrite an existing key (a lost private key locks every car that trusts only it).
    """
    _check_key_id(key_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}.key"
    public_path = out_dir / f"{key_id}.pub"
    for existing in (private_path, public_path):
        if existing.exists():
            raise SigningKeyError(f"{existing} exists already: choose another key id or directory")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL with mode 0600: the key is never readable by others, not even for a moment.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_bytes(public_pem)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPairFiles(key_id, private_path, public_path, raw.hex(), fingerprint(public))


class CommandSigner:
    """Signs commands: the car's own key when it has one, else the fleet key."""

    def __init__(self, fleet_key: SigningKey, vehicle_keys_dir: Path | None = None) -> None:
        self._fleet_key = fleet_key
        self._vehicle_keys_dir = vehicle_keys_dir
        # VIN -> (file's mtime_ns, key): re-read only when the file changes (rotation).
        self._vehicle_keys: dict[str, tuple[int, SigningKey]] = {}

    @property
    def fleet_key(self) -> SigningKey:
        return self._fleet_key

    def key_for(self, vin: str) -> SigningKey:
        """The key that signs `vin`'s commands."""
        directory = self._vehicle_keys_dir
        if directory is None:
            return self._fleet_key
        path = directory / f"{parse_vin(vin)}.key"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._vehicle_keys.pop(vin, None)
            return self._fleet_key
        except OSError as exc:
            raise SigningKeyError(f"cannot read {path}: {exc}") from exc
        cached = self._vehicle_keys.get(vin)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        key = load_signing_key(path, key_id="placeholder")
        key = SigningKey(f"{vin}-{key.fingerprint[:8]}", key.private_key)
        self._vehicle_keys[vin] = (mtime, key)
        return key

    def sign(
        self,
        *,
        command_id: uuid.UUID,
        vin: str,
        action: CommandAction,
        issued_at_ms: int,
        expires_at_ms: int,
        nonce: str,
        key: SigningKey | None = None,
    ) -> CommandMessage:
        """Build and sign one command; the signature covers `CommandMessage.signing_bytes()`.

        Args:
            key: the key to sign with, as `key_for(vin)` gave it (the dispatcher records its
                id before signing); default: `key_for(vin)` now.
        """
        if key is None:
            key = self.key_for(vin)
        unsigned = CommandMessage(
            v=1,
            command_id=command_id,
            vin=vin,
            action=action,
            issued_at=issued_at_ms,
            expires_at=expires_at_ms,
            nonce=nonce,
            key_id=key.key_id,
            signature=_PLACEHOLDER_SIGNATURE,
        )
        return unsigned.model_copy(update={"signature": key.sign(unsigned.signing_bytes())})
