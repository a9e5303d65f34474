"""The car's side of provisioning: the in-car unit's configuration file (TOML).

The format is what device_sim's settings read from `TGW_SIM_CONFIG` (device_sim/settings.py):
`[mqtt]` (broker address, the car's password, TLS files), `[unit]` (its profile) and
`[commands.trusted_keys]` (key id -> raw Ed25519 public key in hex, whose signatures the car
accepts). A box vendor maps the same fields onto its firmware (docs/security.md).

The file holds the car's broker password: it is written mode 0600, atomically, and its
contents never reach a log.
"""

from __future__ import annotations

import datetime
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.provisioning.errors import ProvisioningError

__all__ = ["CarConfig", "read_car_config", "write_car_config"]


def _toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, the rest as is.

    Lone surrogates (e.g. from a path decoded with surrogateescape) have no UTF-8 form, so no
    TOML file can hold them: refused.
    """
    out = ['"']
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ProvisioningError(f"{value!r} cannot be written to TOML (not Unicode text)")
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CarConfig:
    """Everything one car's unit needs to connect and to trust commands."""

    vin: str
    model: str
    host: str
    port: int
    password: str = field(repr=False)
    trusted_keys: Mapping[str, str]
    password_fallback: str | None = field(default=None, repr=False)
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def render(self, *, note: str) -> str:
        """The TOML text; `note` says in a comment what wrote it and why."""
        now = datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="seconds")
        lines = [
            f"# In-car unit configuration of {self.vin} ({self.model}): {note}, {now}.",
            "# SECRET (the car's broker password): keep it mode 0600, on the car only.",
            f"# Run: TGW_SIM_CONFIG=<this file> tgw sim car --vin {self.vin}",
            "",
            "[mqtt]",
            f"host = {_toml_string(self.host)}",
            f"port = {self.port}",
            f"password = {_toml_string(self.password)}",
        ]
        if self.password_fallback is not None:
            lines.append("# The previous password, until the rotation is finished.")
            lines.append(f"password_fallback = {_toml_string(self.password_fallback)}")
        for name, path in (
            ("tls_ca_file", self.tls_ca_file),
            ("tls_cert_file", self.tls_cert_file),
            ("tls_key_file", self.tls_key_file),
        ):
            if path is not None:
                lines.append(f"{name} = {_toml_string(str(path))}")
        lines += ["", "[unit]", f"profile = {_toml_string(self.model)}", ""]
        lines += ["# Command signatures the car accepts: key id = raw Ed25519 public key (hex)."]
        lines += ["[commands.trusted_keys]"]
        lines += [f"{_toml_string(k)} = {_toml_string(v)}" for k, v in self.trusted_keys.items()]
        return "\n".join(lines) + "\n"


def write_car_config(path: Path, config: CarConfig, *, note: str) -> None:
    """Write the configuration mode 0600 from the first byte, replacing an older one atomically."""
    text = config.render(note=note)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise ProvisioningError(f"cannot write the car's configuration {path}: {exc}") from exc


def _path(value: object) -> Path | None:
    return Path(value) if isinstance(value, str) else None


def read_car_config(path: Path, *, vin: str, model: str | None = None) -> CarConfig:
    """Read back a configuration this module wrote (rotation carries its password over).

    Raises:
        ProvisioningError: missing, not TOML, or not this car's (by its header).
    """
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except OSError as exc:
        raise ProvisioningError(
            f"cannot read the car's current configuration {path}: {exc.strerror}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProvisioningError(f"{path} is not TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses per nesting level
        raise ProvisioningError(f"{path} is nested too deeply to be a car's configuration") from exc
    if f"configuration of {vin} " not in text.partition("\n")[0]:
        raise ProvisioningError(f"{path} is not the configuration of {vin}")
    mqtt = document.get("mqtt", {})
    unit = document.get("unit", {})
    trusted = document.get("commands", {}).get("trusted_keys", {})
    password = mqtt.get("password")
    if not isinstance(password, str) or not isinstance(mqtt.get("port"), int):
        raise ProvisioningError(f"{path} has no [mqtt] password and port")
    fallback = mqtt.get("password_fallback")
    return CarConfig(
        vin=vin,
        model=model or str(unit.get("profile", "")),
        host=str(mqtt.get("host", "")),
        port=int(mqtt["port"]),
        password=password,
        trusted_keys={str(k): str(v) for k, v in trusted.items()},
        password_fallback=fallback if isinstance(fallback, str) else None,
        tls_ca_file=_path(mqtt.get("tls_ca_file")),
        tls_cert_file=_path(mqtt.get("tls_cert_file")),
        tls_key_file=_path(mqtt.get("tls_key_file")),
    )
