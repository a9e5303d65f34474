"""Which command-signing keys a car trusts, and the per-car key pairs behind them.

Two modes, following the gateway's `commands` settings (gateway/commands/signing.py):

- per-car keys (`commands.vehicle_keys_dir` set): provisioning creates `<dir>/<VIN>.key` (0600)
  and `.pub`; the gateway signs that car's commands with it (key id `<VIN>-<fingerprint8>`) and
  the car trusts only it. A leaked car configuration reveals nothing, and a key can be rotated
  for one car.
- fleet key (no directory): the car trusts the fleet key (`commands.signing_key_file`).

A rotation stages the new pair as `<VIN>.next.key` (the signer ignores it) while the car trusts
both; finishing moves it over `<VIN>.key` atomically and the signer, which re-reads a car's key
file when it changes, signs with the new key from then on.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.commands.errors import SigningKeyError
from gateway.commands.signing import SigningKey, create_key_pair, load_signing_key
from gateway.config import CommandSettings
from gateway.provisioning.errors import ProvisioningError

__all__ = ["CommandTrust"]

_STAGED = ".next"


def _car_key_id(vin: str, key: SigningKey) -> str:
    # The id CommandSigner.key_for gives a car's own key.
    return f"{vin}-{key.fingerprint[:8]}"


class CommandTrust:
    """Creates, rotates and removes the keys whose signatures a car accepts."""

    def __init__(self, commands: CommandSettings) -> None:
        self._commands = commands

    @property
    def per_car(self) -> bool:
        return self._commands.vehicle_keys_dir is not None

    def _dir(self) -> Path:
        directory = self._commands.vehicle_keys_dir
        assert directory is not None
        return directory

    def _paths(self, vin: str, suffix: str = "") -> tuple[Path, Path]:
        directory = self._dir()
        return directory / f"{vin}{suffix}.key", directory / f"{vin}{suffix}.pub"

    def _load(self, path: Path) -> SigningKey:
        try:
            return load_signing_key(path, key_id="placeholder")
        except SigningKeyError as exc:
            raise ProvisioningError(str(exc)) from exc

    def _trust(self, vin: str, path: Path) -> dict[str, str]:
        key = self._load(path)
        return {_car_key_id(vin, key): key.public_hex}

    def fleet_trust(self) -> dict[str, str]:
        """The fleet key's id and public key, as the gateway names it."""
        path = self._commands.signing_key_file
        if path is None:
            raise ProvisioningError(
                "cars need a key to trust: set commands.signing_key_file (`tgw keys create`), "
                "and commands.vehicle_keys_dir for a key per car"
            )
        try:
            key = load_signing_key(path, self._commands.signing_key_id)
        except SigningKeyError as exc:
            raise ProvisioningError(str(exc)) from exc
        return {key.key_id: key.public_hex}

    def current(self, vin: str) -> dict[str, str]:
        """What the car trusts now (without a staged key)."""
        if not self.per_car:
            return self.fleet_trust()
        return self._trust(vin, self._paths(vin)[0])

    def provision(self, vin: str, *, replace: bool = False) -> dict[str, str]:
        """Create the car's key pair (per-car mode; kept unless `replace`); return its trust."""
        if not self.per_car:
            return self.fleet_trust()
        private, _public = self._paths(vin)
        if private.exists() and not replace:
            return self._trust(vin, private)
        self.remove(vin)
        try:
            create_key_pair(self._dir(), vin)
        except SigningKeyError as exc:
            raise ProvisioningError(str(exc)) from exc
        return self._trust(vin, private)

    def stage(self, vin: str) -> dict[str, str]:
        """Create the next key pair beside the current one; return old + new trust."""
        if not self.per_car:
            return self.fleet_trust()
        staged, staged_pub = self._paths(vin, _STAGED)
        staged.unlink(missing_ok=True)
        staged_pub.unlink(missing_ok=True)
        try:
            create_key_pair(self._dir(), f"{vin}{_STAGED}")
        except SigningKeyError as exc:
            raise ProvisioningError(str(exc)) from exc
        return {**self.current(vin), **self._trust(vin, staged)}

    def promote(self, vin: str) -> dict[str, str]:
        """Make the staged key the car's key (the gateway signs with it from now on)."""
        if not self.per_car:
            return self.fleet_trust()
        staged, staged_pub = self._paths(vin, _STAGED)
        private, public = self._paths(vin)
        if not staged.exists():
            raise ProvisioningError(f"{vin} has no staged signing key ({staged})")
        os.replace(staged_pub, public)
        os.replace(staged, private)  # last: the signer notices the key file's change
        return self._trust(vin, private)

    def remove(self, vin: str) -> list[Path]:
        """Delete the car's key files (current and staged); return what was deleted."""
        if not self.per_car:
            return []
        removed = []
        for path in (*self._paths(vin), *self._paths(vin, _STAGED)):
            if path.exists():
                path.unlink()
                removed.append(path)
        return removed
