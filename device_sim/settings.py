"""Typed settings of the in-car unit and the simulated fleet, built once in the entry point.

Sources, strongest first: keyword arguments (the CLI's options), `TGW_SIM_*` environment
variables (nested with a double underscore, e.g. `TGW_SIM_MQTT__PORT=1883`), the TOML file
named by `TGW_SIM_CONFIG`, then the defaults below. Defaults are safe: loopback broker, no
password, virtual CAN.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.limits import MAX_SAMPLES_PER_MESSAGE

__all__ = [
    "CONFIG_FILE_ENV",
    "CanSettings",
    "CommandTrustSettings",
    "FleetSettings",
    "LogSettings",
    "MqttSettings",
    "SimSettings",
    "UnitSettings",
]

CONFIG_FILE_ENV = "TGW_SIM_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttSettings(_Section):
    """How a car reaches the broker. Its username is its VIN; its password is its own."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    password: SecretStr | None = Field(
        default=None, description="One car's password (tgw sim car); fleets use a credentials file."
    )
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # The broker keeps the car's session (its commands subscription) this long while it is away.
    session_expiry_s: int = Field(default=3600, ge=0)
    timeout_s: float = Field(default=10.0, gt=0, description="Connect and PUBACK deadline.")
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_inflight: int = Field(default=100, ge=1, le=65535)
    tls_ca_file: Path | None = None
    # A client certificate, for a broker that requires one (`tgw provision` writes them).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    password_fallback: SecretStr | None = Field(
        default=None,
        description="The previous password while a rotation is staged: tried when the broker "
        "refuses `password` (tgw rotate).",
    )


class CanSettings(_Section):
    """The car's CAN bus."""

    interface: str = Field(default="virtual", description="python-can interface (socketcan...)")
    channel: str | None = Field(
        default=None, description="can0/vcan0 for SocketCAN; default for virtual: tgw-<VIN>."
    )
    bitrate: int | None = None
    simulate_ecus: bool = Field(
        default=True, description="Run simulated ECUs on the bus (off on a real car)."
    )


class UnitSettings(_Section):
    """The telematics unit's behaviour."""

    profile: str = "tgw_generic"
    driving_interval_s: float = Field(default=5.0, gt=0)
    parked_interval_s: float = Field(default=300.0, gt=0)
    min_interval_s: float = Field(
        default=1.0, ge=0, description="Change-triggered samples come no more often than this."
    )
    queue_dir: Path = Path("var/device")
    queue_max_records: int = Field(default=100_000, ge=2)
    commit_interval_s: float = Field(default=0.05, gt=0)
    confirm_timeout_s: float = Field(default=2.0, gt=0, description="CAN read-back deadline.")
    low_fuel_pct: float = Field(default=15.0, ge=0, le=100)
    low_voltage_v: float = Field(default=11.8, ge=0, le=60)
    backlog_batch: int = Field(default=MAX_SAMPLES_PER_MESSAGE, ge=1, le=MAX_SAMPLES_PER_MESSAGE)
    backlog_window: int = Field(default=4, ge=1, description="Backlog messages in flight at once.")
    backlog_msgs_per_s: float = Field(default=20.0, gt=0, description="Drain rate per car.")


class FleetSettings(_Section):
    """A simulated fleet in one process."""

    cars: int = Field(default=10, ge=1, le=100_000)
    city: Literal["munich"] = "munich"
    seed: int = 1
    profiles: tuple[str, ...] = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")
    credentials_file: Path | None = None
    ledger_file: Path | None = None
    driving_share: float = Field(default=0.35, ge=0, le=1)
    connect_rate_per_s: float = Field(default=500.0, gt=0)
    # Connection handshakes (TCP connect to CONNACK) in progress at once, the whole fleet:
    # below the broker's listen backlog (Mosquitto: 100), so a burst never overflows it.
    connect_concurrency: int = Field(default=64, ge=1)


class CommandTrustSettings(_Section):
    """Whose command signatures the car accepts (written by `tgw provision`)."""

    # key id -> raw Ed25519 public key, 64 hex digits. Empty: signatures are NOT checked.
    trusted_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("trusted_keys")
    @classmethod
    def _hex_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key_id, public_hex in value.items():
            if not 1 <= len(key_id) <= 64 or not all(c.isalnum() or c in "_.-" for c in key_id):
                raise ValueError(f"key id {key_id!r}: 1 to 64 of A-Z a-z 0-9 _ . -")
            if len(public_hex) != 64 or not all(c in "0123456789abcdefABCDEF" for c in public_hex):
                raise ValueError(f"trusted key {key_id!r} is not 64 hex digits")
        return value


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_output: bool | None = Field(default=None, description="None: JSON unless on a TTY.")


class SimSettings(BaseSettings):
    """Everything `tgw sim` needs to know."""

    model_config = SettingsConfigDict(
        env_prefix="TGW_SIM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    mqtt: MqttSettings = MqttSettings()
    can: CanSettings = CanSettings()
    unit: UnitSettings = UnitSettings()
    fleet: FleetSettings = FleetSettings()
    commands: CommandTrustSettings = CommandTrustSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)
