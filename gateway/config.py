"""Typed settings of the gateway, built once in the entry point and passed down.

Sources, strongest first: keyword arguments, `TGW_*` environment variables
(nested with a double underscore, e.g. `TGW_MQTT__PORT=1883`), the TOML file
named by `TGW_CONFIG`, then the defaults below. Defaults are safe: loopback
addresses, no passwords.
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

from schemas.limits import (
    MAX_COMMAND_TTL_MS,
    MAX_FUTURE_SKEW_MS,
    MAX_PAST_AGE_MS,
    MAX_PAYLOAD_BYTES,
)
from schemas.topics import GATEWAY_SHARE_GROUP

__all__ = [
    "BrokerSettings",
    "CommandSettings",
    "CommandTtls",
    "DatabaseSettings",
    "HttpSettings",
    "IngestSettings",
    "LogSettings",
    "MqttSettings",
    "Settings",
]

CONFIG_FILE_ENV = "TGW_CONFIG"
_WEAK_PASSWORDS = frozenset({"", "changeme", "password", "secret", "tgw", "mosquitto"})


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttSettings(_Section):
    """How the gateway reaches the broker."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = "tgw-gateway"
    password: SecretStr | None = None
    # Stable per instance: the broker keeps this session's unacknowledged messages.
    client_id: str = "tgw-gateway-1"
    share_group: str = GATEWAY_SHARE_GROUP
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # How long the broker keeps our session (and queues for it) while we are away.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    # MQTT 5 receive maximum: unacknowledged messages in flight to us. Bounds memory
    # and applies back-pressure when the database is slow, since we ack after commit.
    receive_maximum: int = Field(default=20_000, ge=1, le=65535)
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("password")
    @classmethod
    def _refuse_weak_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in _WEAK_PASSWORDS:
            raise ValueError("the broker password is a well-known default; set a real one")
        return value


class BrokerSettings(_Section):
    """The broker's account files and how it reloads them: what `tgw provision` changes.

    Cars get a password in `password_file` and a client in Mosquitto's dynamic-security plugin
    (role `car_role`: subscribe ACLs), over `$CONTROL` as `admin_username` (docs/security.md).
    """

    password_file: Path = Path("/etc/mosquitto/tgw/passwd")
    acl_file: Path | None = Path("/etc/mosquitto/tgw/acl")
    # pid_file: SIGHUP the pid in `pid_file`; command: run `reload_command`; none: print a hint.
    reload: Literal["pid_file", "command", "none"] = "pid_file"
    pid_file: Path = Path("/run/mosquitto/mosquitto.pid")
    reload_command: tuple[str, ...] = ()
    reload_timeout_s: float = Field(default=15.0, gt=0, le=300)
    # Connects where the gateway does (the `mqtt` section's host, port and TLS).
    admin_username: str = "tgw-provisioner"
    admin_password: SecretStr | None = None
    probe_username: str = "tgw-provision-probe"
    car_role: str = "tgw-car"
    # What a car's configuration names: its broker address (default: the `mqtt` section's) and
    # the CA it verifies the broker with (TLS when set).
    car_host: str | None = None
    car_port: int | None = Field(default=None, ge=1, le=65535)
    car_tls_ca_file: Path | None = None
    # Client certificates for cars, signed by this CA (`tgw pki init`); off: passwords only.
    client_certificates: bool = False
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    car_cert_days: int = Field(default=397, ge=1, le=3650)

    @field_validator("admin_password")
    @classmethod
    def _refuse_weak_admin_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in _WEAK_PASSWORDS:
            raise ValueError("the broker admin password is a well-known default; set a real one")
        return value


class DatabaseSettings(_Section):
    """How the gateway reaches PostgreSQL/TimescaleDB."""

    dsn: SecretStr = SecretStr("postgresql://tgw@127.0.0.1:5432/tgw")
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    storage_mode: Literal["auto", "timescaledb", "postgres"] = "auto"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # How long anything waits for a pooled connection; then an API request answers 503
    # (`database-unavailable`, with Retry-After) instead of hanging, and a worker retries.
    pool_timeout_s: float = Field(default=5.0, gt=0)


class IngestSettings(_Section):
    """Batching, validation tolerances and connectivity rules of ingest."""

    batch_max_messages: int = Field(default=2000, ge=1)
    batch_max_delay_ms: int = Field(default=100, ge=1)
    max_payload_bytes: int = Field(default=MAX_PAYLOAD_BYTES, ge=1)
    max_future_skew_ms: int = Field(default=MAX_FUTURE_SKEW_MS, ge=0)
    max_past_age_ms: int = Field(default=MAX_PAST_AGE_MS, ge=0)
    # Dead letters keep at most this much of the raw payload.
    dead_letter_payload_bytes: int = Field(default=8192, ge=0)
    require_registration: bool = False
    stale_after_s: int = Field(default=300, ge=1)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=15.0, gt=0)


class HttpSettings(_Section):
    """The gateway's own HTTP endpoint (health, metrics, API)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class CommandTtls(_Section):
    """Default time-to-live per action, in seconds, when a request names none."""

    lock: int = Field(default=30, ge=2, le=MAX_COMMAND_TTL_MS // 1000)
    unlock: int = Field(default=30, ge=2, le=MAX_COMMAND_TTL_MS // 1000)
    unlock_and_enable_driving: int = Field(default=30, ge=2, le=MAX_COMMAND_TTL_MS // 1000)
    lock_and_disable_driving: int = Field(default=30, ge=2, le=MAX_COMMAND_TTL_MS // 1000)
    request_state: int = Field(default=15, ge=2, le=MAX_COMMAND_TTL_MS // 1000)


class CommandSettings(_Section):
    """Remote commands: signing key, deadlines, one-in-flight policy (docs/commands.md)."""

    # None: the gateway cannot sign, so it accepts no commands (the API answers 503).
    signing_key_file: Path | None = None
    signing_key_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Default: the file's stem."
    )
    # Optional per-car keys: <dir>/<VIN>.key signs that car's commands instead of the fleet key.
    vehicle_keys_dir: Path | None = None
    default_ttl_s: CommandTtls = CommandTtls()
    # queue: later commands for a busy car wait in order; refuse: answer 409 while one is active.
    busy_policy: Literal["queue", "refuse"] = "queue"
    max_queued_per_vehicle: int = Field(default=5, ge=1, le=100)
    # After the car accepted: how long it has to answer executed or failed.
    answer_timeout_s: float = Field(default=15.0, gt=0, le=600)
    # After expires_at: how long a sent command may still be answered (car clock skew + latency).
    expiry_grace_s: float = Field(default=5.0, ge=0, le=60)
    # After executed: how long telemetry may take to confirm the lock (then it stays executed).
    verify_window_s: float = Field(default=600.0, gt=0)
    publish_timeout_s: float = Field(default=5.0, gt=0, le=60)
    sweep_interval_s: float = Field(default=0.5, gt=0, le=60)
    result_workers: int = Field(default=2, ge=1, le=64)
    # At most this many new commands per window per operator token / per car (0: no limit); a
    # careless script or a stolen operator token cannot flood the fleet (answer 429).
    rate_limit_per_operator: int = Field(default=120, ge=0)
    rate_limit_per_vehicle: int = Field(default=10, ge=0)
    rate_limit_window_s: int = Field(default=60, ge=1, le=3600)
    # Where a rental may end: a polygon per city, vertices [longitude, latitude] (WGS84).
    operating_areas: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)

    @field_validator("operating_areas")
    @classmethod
    def _check_areas(
        cls, areas: dict[str, list[tuple[float, float]]]
    ) -> dict[str, list[tuple[float, float]]]:
        for name, polygon in areas.items():
            if len(polygon) < 3:
                raise ValueError(f"operating area {name!r} needs at least 3 vertices")
            for lon, lat in polygon:
                if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                    raise ValueError(
                        f"operating area {name!r}: ({lon}, {lat}) is not [longitude, latitude]"
                    )
        return areas


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_output: bool | None = Field(default=None, description="None: JSON unless on a TTY.")


class Settings(BaseSettings):
    """Everything the gateway process needs to know."""

    model_config = SettingsConfigDict(
        env_prefix="TGW_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    http: HttpSettings = HttpSettings()
    commands: CommandSettings = CommandSettings()
    broker: BrokerSettings = BrokerSettings()
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
