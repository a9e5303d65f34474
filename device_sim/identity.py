"""Car identities: VINs made up deterministically from a seed, and credentials files.

A fleet of N cars with seed S always has the same VINs, so `tgw sim credentials` can
write the accounts a broker needs before `tgw sim fleet` runs the cars.

Credentials file (CSV, UTF-8): one ``vin,password`` per line; an optional header line
``vin,password``; blank lines and lines starting with ``#`` are ignored. Keep it private
(the writer creates it with mode 0600).
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from device_sim.errors import DeviceConfigurationError
from schemas.vin import VinError, parse_vin

__all__ = ["fleet_vins", "make_vin", "read_credentials", "write_credentials"]

_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"  # ISO 3779: no I, O, Q
_TRANSLITERATION = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_MODEL_YEARS = "ABCDEFGHJKLMNPRSTVWXY123456789"  # position 10 (no U, Z, 0 either)
# World manufacturer identifiers by profile, for realism; tgw's own cars use "TGW".
_WMI = {"bmw_e8x": "WBA", "vw_mqb": "WVW"}


def _check_digit(vin_without: str) -> str:
    total = sum(_TRANSLITERATION[c] * w for c, w in zip(vin_without, _WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def make_vin(rng: random.Random, profile: str = "tgw_generic") -> str:
    """A made-up VIN that passes ISO 3779 (alphabet, length) and the check digit (position 9)."""
    wmi = _WMI.get(profile, "TGW")
    vds = "".join(rng.choice(_ALPHABET) for _ in range(5))
    year = rng.choice(_MODEL_YEARS)
    plant = rng.choice(_ALPHABET)
    serial = f"{rng.randrange(1_000_000):06d}"
    draft = f"{wmi}{vds}0{year}{plant}{serial}"
    vin = draft[:8] + _check_digit(draft) + draft[9:]
    return parse_vin(vin)


def fleet_vins(count: int, seed: int, profiles: Sequence[str]) -> list[tuple[str, str]]:
    """(VIN, profile name) of each car of a fleet: the same for the same count, seed, profiles."""
    if not profiles:
        raise DeviceConfigurationError("a fleet needs at least one vehicle profile")
    cars: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index in range(count):
        rng = random.Random(f"tgw-fleet:{seed}:{index}")  # noqa: S311  (simulation, not security)
        profile = profiles[index % len(profiles)]
        vin = make_vin(rng, profile)
        while vin in seen:
            vin = make_vin(rng, profile)
        seen.add(vin)
        cars.append((vin, profile))
    return cars


def read_credentials(path: Path) -> dict[str, str]:
    """VIN -> password from a credentials file (see the module docstring).

    Raises:
        DeviceConfigurationError: the file is missing or a line is not ``vin,password``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeviceConfigurationError(
            f"cannot read the credentials file {path}: {exc.strerror}; "
            "create one with `tgw sim credentials`"
        ) from exc
    credentials: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#") or line.lower() == "vin,password":
            continue
        vin, sep, password = line.partition(",")
        if not sep or not password:
            raise DeviceConfigurationError(f"{path}:{number}: expected 'vin,password'")
        try:
            credentials[parse_vin(vin.strip())] = password.strip()
        except VinError as exc:
            raise DeviceConfigurationError(f"{path}:{number}: {exc}") from exc
    return credentials


def write_credentials(
    path: Path, vins: Iterable[str], existing: Mapping[str, str] | None = None
) -> int:
    """Write a credentials file (mode 0600) with a fresh random password per new VIN.

    VINs already in `existing` keep their password. Returns how many lines were written.
    """
    lines = ["vin,password"]
    for vin in vins:
        password = (existing or {}).get(vin) or secrets.token_urlsafe(24)
        lines.append(f"{vin},{password}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return len(lines) - 1
