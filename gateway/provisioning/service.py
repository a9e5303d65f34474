"""Provisioning, deprovisioning and rotating cars: every place a car's identity lives, in order.

A provisioned car has:
  1. a broker password (its hash in the broker's password file; the broker reloads on SIGHUP
     and the probe account proves it did);
  2. a dynamic-security client with the car role (subscribe ACLs; mosquitto.conf says why);
  3. the command-signing keys it trusts (a key pair of its own with `commands.vehicle_keys_dir`);
  4. optionally a client certificate from the project's CA;
  5. a `vehicles` row, and an `audit_log` entry for every change;
  6. its side of all this: the in-car unit's configuration file, written for the car.

Order matters for safety: the subscribe ACL exists before the password does, and goes after
it; a car's configuration is written before its password is active, so a failure half-way
leaves at worst files nobody can use yet (re-run with `replace=True`).

Rotation has two steps, so the car is never locked out. `rotate` stages a new password (kept in
the `.pending` file beside the password file) and, with per-car keys, a new key pair; the car's
new configuration holds the new password with the old one as `password_fallback`, and trusts
the old and the new key. Once the car has it, `finish_rotation` makes the broker take the new
password (the car's old-password connection is closed by the reload and it reconnects with the
new one), switches the gateway to the new key, and writes the final configuration.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.config import Settings
from gateway.pki import CertificateAuthority, PkiError
from gateway.provisioning.carconfig import CarConfig, read_car_config, write_car_config
from gateway.provisioning.dynsec import DynsecAdmin
from gateway.provisioning.endpoint import BrokerEndpoint
from gateway.provisioning.errors import ProvisioningError
from gateway.provisioning.passwords import (
    AccountFiles,
    PasswordEntries,
    hash_password,
    password_matches,
)
from gateway.provisioning.registry import Registration, VehicleRegistry
from gateway.provisioning.reload import BrokerReloader, ReloadOutcome
from gateway.provisioning.trust import CommandTrust
from schemas.vin import VinError, parse_vin

__all__ = [
    "CarRequest",
    "Deprovisioned",
    "ProgressHook",
    "Provisioned",
    "Provisioner",
    "Rotation",
    "parse_model",
]

_log = structlog.get_logger(__name__)

_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
_ACL_CHUNK = 200
# One batch of plugin commands on a broker with tens of thousands of cars (see above).
_ADMIN_BATCH_TIMEOUT_S = 120.0

# (what is happening, how many cars are done, how many in all)
ProgressHook = Callable[[str, int, int], None]


def parse_model(model: str) -> str:
    """A vehicle model (profile) name: lower case letters, digits and `_`, e.g. bmw_e8x."""
    if not _MODEL_RE.fullmatch(model):
        raise ProvisioningError(
            f"model {model!r} is not a profile name (a-z, 0-9, _; e.g. bmw_e8x, vw_mqb)"
        )
    return model


def _vin(vin: str) -> str:
    try:
        return parse_vin(vin)
    except VinError as exc:
        raise ProvisioningError(f"{vin!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CarRequest:
    """One car to provision, and where its configuration goes."""

    vin: str
    model: str
    config_path: Path


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What provisioning did, for the operator."""

    vins: tuple[str, ...]
    config_paths: tuple[Path, ...]
    key_ids: dict[str, tuple[str, ...]]
    reload: ReloadOutcome


@dataclass(frozen=True, slots=True)
class Deprovisioned:
    vin: str
    had_password: bool
    key_files_removed: int
    registration: Registration
    reload: ReloadOutcome


@dataclass(frozen=True, slots=True)
class Rotation:
    """A staged or finished rotation."""

    vin: str
    config_path: Path
    trusted_key_ids: tuple[str, ...]
    finished: bool
    reload: ReloadOutcome | None


class Provisioner:
    """Provisions, rotates and removes cars as the settings describe (see the module docstring).

    Args:
        settings: the gateway's settings (`broker`, `mqtt`, `commands`, `database`).
        actor: who acts, for the audit log.
    """

    def __init__(self, settings: Settings, *, actor: str) -> None:
        self._settings = settings
        self._broker = settings.broker
        self._endpoint = BrokerEndpoint.from_settings(settings.mqtt)
        self._files = AccountFiles(settings.broker.password_file)
        self._reloader = BrokerReloader(settings.broker, self._endpoint)
        self._trust = CommandTrust(settings.commands)
        self._registry = VehicleRegistry(settings.database.dsn.get_secret_value(), actor)

    # -- pieces -------------------------------------------------------------------------------

    def _admin(self) -> DynsecAdmin:
        password = self._broker.admin_password
        if password is None:
            raise ProvisioningError(
                f"set broker.admin_password (TGW_BROKER__ADMIN_PASSWORD): the password of the "
                f"broker account {self._broker.admin_username!r} that manages cars' subscribe ACLs"
            )
        return DynsecAdmin(
            self._endpoint,
            self._broker.admin_username,
            password.get_secret_value(),
            timeout_s=_ADMIN_BATCH_TIMEOUT_S,
        )

    def _commit(self, change: Callable[[PasswordEntries], None]) -> ReloadOutcome:
        """Change the password file under its lock, then reload the broker and confirm it."""
        with self._files.locked() as entries:
            change(entries)
            probe_password = secrets.token_urlsafe(24)
            entries.accounts[self._broker.probe_username] = hash_password(probe_password)
            self._files.write(entries)
            return self._reloader.reload(probe_password)

    def _authority(self) -> CertificateAuthority | None:
        broker = self._broker
        if not broker.client_certificates:
            return None
        if broker.ca_cert_file is None or broker.ca_key_file is None:
            raise ProvisioningError(
                "broker.client_certificates needs broker.ca_cert_file and broker.ca_key_file "
                "(`tgw pki init`)"
            )
        try:
            return CertificateAuthority.load(broker.ca_cert_file, broker.ca_key_file)
        except PkiError as exc:
            raise ProvisioningError(str(exc)) from exc

    def _car_ca(self, config_path: Path) -> Path | None:
        """The CA the car verifies the broker with, copied beside its configuration."""
        source = self._broker.car_tls_ca_file
        if source is None:
            return None
        target = config_path.parent.resolve() / "ca.crt"
        try:
            if not target.exists() or target.read_bytes() != source.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        except OSError as exc:
            raise ProvisioningError(f"cannot copy the CA {source} to {target}: {exc}") from exc
        return target

    def _car_config(
        self,
        request: CarRequest,
        password: str,
        trusted: dict[str, str],
        *,
        fallback: str | None = None,
        cert_stem: str | None = None,
    ) -> CarConfig:
        mqtt = self._settings.mqtt
        cert = key = None
        if cert_stem is not None:
            base = request.config_path.parent.resolve()
            cert, key = base / f"{cert_stem}.crt", base / f"{cert_stem}.key"
        return CarConfig(
            vin=request.vin,
            model=request.model,
            host=self._broker.car_host or mqtt.host,
            port=self._broker.car_port or mqtt.port,
            password=password,
            password_fallback=fallback,
            trusted_keys=trusted,
            tls_ca_file=self._car_ca(request.config_path),
            tls_cert_file=cert,
            tls_key_file=key,
        )

    def _issue_certificate(
        self, authority: CertificateAuthority | None, request: CarRequest, stem: str
    ) -> str | None:
        if authority is None:
            return None
        issued = authority.issue(request.vin, days=self._broker.car_cert_days)
        base = request.config_path.parent
        issued.write(base / f"{stem}.crt", base / f"{stem}.key", replace=True)
        return stem

    # -- provision ----------------------------------------------------------------------------

    async def provision(
        self,
        requests: Sequence[CarRequest],
        *,
        replace: bool = False,
        progress: ProgressHook | None = None,
    ) -> Provisioned:
        """Provision every car in `requests` (one broker reload and one transaction in all).

        Raises:
            ProvisioningError: bad input, a car provisioned already (without `replace`), or a
                step failed (the message says which; re-running with `replace` is safe).
        """
        cars = [CarRequest(_vin(r.vin), parse_model(r.model), r.config_path) for r in requests]
        vins = [car.vin for car in cars]
        duplicates = sorted({vin for vin in vins if vins.count(vin) > 1})
        if duplicates:
            raise ProvisioningError(f"listed more than once: {', '.join(duplicates)}")
        if not cars:
            raise ProvisioningError("no cars to provision")
        existing = self._files.read().accounts
        taken = [vin for vin in vins if vin in existing]
        if taken and not replace:
            raise ProvisioningError(
                f"provisioned already: {', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''}; "
                "use `tgw rotate` for new credentials, or --replace to start over"
            )
        self._admin()  # the admin password must be there before anything is written
        authority = self._authority()
        report = progress or (lambda _what, _done, _total: None)
        total = len(cars)
        hashes: dict[str, str] = {}
        key_ids: dict[str, tuple[str, ...]] = {}
        for done, car in enumerate(cars):
            report("keys and configuration", done, total)
            password = secrets.token_urlsafe(24)
            trusted = self._trust.provision(car.vin, replace=replace)
            stem = self._issue_certificate(authority, car, car.config_path.stem)
            config = self._car_config(car, password, trusted, cert_stem=stem)
            write_car_config(car.config_path, config, note="provisioned")
            hashes[car.vin] = hash_password(password)
            key_ids[car.vin] = tuple(trusted)
        await asyncio.to_thread(self._add_subscribe_acls, vins, report)
        report("broker passwords (reload)", total, total)

        def add(entries: PasswordEntries) -> None:
            entries.accounts.update(hashes)
            for vin in vins:
                entries.pending.pop(vin, None)

        outcome = await asyncio.to_thread(self._commit, add)
        report("registration", total, total)
        await self._registry.register([(car.vin, car.model) for car in cars], "vehicle.provisioned")
        report("done", total, total)
        _log.info("provision.done", cars=total, reload_confirmed=outcome.confirmed)
        return Provisioned(tuple(vins), tuple(c.config_path for c in cars), key_ids, outcome)

    def _add_subscribe_acls(self, vins: Sequence[str], report: ProgressHook | None = None) -> None:
        # Mosquitto 2.0's plugin rewrites its whole file after every change, so each client
        # costs more the more there are (about 3.5 ms per thousand existing ones here): chunks
        # show progress, and each chunk may take a while on a big fleet.
        with self._admin() as admin:
            for start in range(0, len(vins), _ACL_CHUNK):
                if report is not None:
                    report("subscribe ACLs (dynamic-security)", start, len(vins))
                admin.add_clients(vins[start : start + _ACL_CHUNK], self._broker.car_role)

    # -- deprovision --------------------------------------------------------------------------

    async def deprovision(self, vin: str) -> Deprovisioned:
        """Remove the car's password (its connection is closed by the reload), its subscribe ACL,
        its keys and its registration.

        Raises:
            ProvisioningError: the VIN is malformed, or the car is not known anywhere.
        """
        vin = _vin(vin)
        entries = self._files.read()
        had_password = vin in entries.accounts
        if (
            not had_password
            and vin not in entries.pending
            and not await self._registry.registered(vin)
        ):
            raise ProvisioningError(f"{vin} is not provisioned (no password, no registration)")
        self._admin()

        def remove(entries: PasswordEntries) -> None:
            entries.accounts.pop(vin, None)
            entries.pending.pop(vin, None)

        outcome = await asyncio.to_thread(self._commit, remove)
        await asyncio.to_thread(self._remove_subscribe_acl, vin)
        removed = self._trust.remove(vin)
        registration = await self._registry.unregister(vin)
        _log.info("provision.deprovisioned", vin=vin, row_deleted=registration.deleted)
        return Deprovisioned(vin, had_password, len(removed), registration, outcome)

    def _remove_subscribe_acl(self, vin: str) -> None:
        with self._admin() as admin:
            admin.remove_clients([vin])

    # -- rotate -------------------------------------------------------------------------------

    async def rotate(self, vin: str, config_path: Path) -> Rotation:
        """Stage new credentials (step 1): write the car's configuration with the new password,
        the current one as fallback, and trust in the current and the new key.

        Args:
            vin: the car.
            config_path: the car's current configuration (read for its password), replaced by
                the staged one.
        """
        vin = _vin(vin)
        entries = self._files.read()
        if vin not in entries.accounts:
            raise ProvisioningError(f"{vin} is not provisioned: `tgw provision {vin}` first")
        current = read_car_config(config_path, vin=vin)
        # Re-staging: the broker still has the password the staged file keeps as fallback.
        active = current.password_fallback if vin in entries.pending else current.password
        if active is None or not password_matches(active, entries.accounts[vin]):
            raise ProvisioningError(
                f"{config_path} does not hold {vin}'s current broker password: give the car's "
                "current configuration"
            )
        request = CarRequest(vin, current.model, config_path)
        new_password = secrets.token_urlsafe(24)
        trusted = self._trust.stage(vin)
        stem = self._issue_certificate(self._authority(), request, f"{config_path.stem}.next")
        config = self._car_config(request, new_password, trusted, fallback=active, cert_stem=stem)
        with self._files.locked() as locked:
            if locked.accounts.get(vin) != entries.accounts[vin]:
                raise ProvisioningError(f"{vin}'s password changed meanwhile: try again")
            write_car_config(config_path, config, note="rotation staged (run --finish next)")
            locked.pending[vin] = hash_password(new_password)
            self._files.write(locked)
        await self._registry.audit(vin, "vehicle.rotation_staged", {"keys": sorted(trusted)})
        _log.info("provision.rotation_staged", vin=vin)
        return Rotation(vin, config_path, tuple(trusted), finished=False, reload=None)

    async def finish_rotation(self, vin: str, config_path: Path) -> Rotation:
        """Step 2, once the car has the staged configuration: the broker takes the new password,
        the gateway signs with the new key, the final configuration trusts only the new key.
        """
        vin = _vin(vin)
        staged = read_car_config(config_path, vin=vin)
        pending = self._files.read().pending.get(vin)
        if pending is None:
            raise ProvisioningError(f"{vin} has no staged rotation: `tgw rotate {vin}` first")
        if not password_matches(staged.password, pending):
            raise ProvisioningError(f"{config_path} is not {vin}'s staged configuration")

        def activate(entries: PasswordEntries) -> None:
            hashed = entries.pending.pop(vin, None)
            if hashed is None:
                raise ProvisioningError(f"{vin}'s staged rotation vanished meanwhile")
            entries.accounts[vin] = hashed

        outcome = await asyncio.to_thread(self._commit, activate)
        trusted = self._trust.promote(vin)
        stem = self._promote_certificate(config_path)
        request = CarRequest(vin, staged.model, config_path)
        final = self._car_config(request, staged.password, trusted, cert_stem=stem)
        write_car_config(config_path, final, note="credentials rotated")
        await self._registry.audit(vin, "vehicle.credentials_rotated", {"keys": sorted(trusted)})
        _log.info("provision.rotated", vin=vin)
        return Rotation(vin, config_path, tuple(trusted), finished=True, reload=outcome)

    def _promote_certificate(self, config_path: Path) -> str | None:
        if not self._broker.client_certificates:
            return None
        base, stem = config_path.parent, config_path.stem
        for suffix in (".crt", ".key"):
            staged = base / f"{stem}.next{suffix}"
            if staged.exists():
                staged.replace(base / f"{stem}{suffix}")
        return stem
