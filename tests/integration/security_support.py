"""Helpers for the security tests: settings that point provisioning at a private broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from gateway.commands.signing import KeyPairFiles, create_key_pair
from gateway.config import BrokerSettings, CommandSettings, DatabaseSettings, MqttSettings, Settings
from gateway.devstack import BrokerAccount, MosquittoBroker
from gateway.provisioning.carconfig import read_car_config
from gateway.provisioning.endpoint import BrokerEndpoint, connack

WAIT_S = 20.0


def provisioning_settings(
    broker: MosquittoBroker,
    dsn: str,
    keys_dir: Path,
    *,
    per_car_keys: bool = True,
    fleet_key: KeyPairFiles | None = None,
    **broker_settings: Any,
) -> Settings:
    """Settings for `tgw provision` against `broker` (its files, its pid, its admin account)."""
    fleet = fleet_key or create_key_pair(keys_dir / "fleet", "tgw-fleet")
    return Settings(
        mqtt=MqttSettings(
            host=broker.host,
            port=broker.port,
            username=broker.gateway_username,
            password=SecretStr(broker.gateway_password),
        ),
        database=DatabaseSettings(dsn=SecretStr(dsn), pool_min_size=1, pool_max_size=4),
        commands=CommandSettings(
            signing_key_file=fleet.private_path,
            signing_key_id=fleet.key_id,
            vehicle_keys_dir=keys_dir / "cars" if per_car_keys else None,
        ),
        broker=BrokerSettings(
            password_file=broker.password_file,
            acl_file=broker.acl_file,
            reload="pid_file",
            pid_file=broker.pid_file,
            admin_password=SecretStr(broker.admin_account.password),
            **broker_settings,
        ),
    )


def car_account(config_path: Path, vin: str) -> BrokerAccount:
    """The broker account a provisioned car's configuration file holds."""
    config = read_car_config(config_path, vin=vin)
    return BrokerAccount(vin, config.password, config.host, config.port)


def can_log_in(broker: MosquittoBroker, username: str, password: str) -> bool:
    reason = connack(BrokerEndpoint(broker.host, broker.port), username, password)
    return reason is not None and not reason.is_failure


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `check` until it holds (a health check with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def audit_actions(dsn: str, vin: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT action FROM audit_log WHERE target = %s ORDER BY id", (vin,)
        )
        return [row[0] for row in await cur.fetchall()]


async def vehicle_model(dsn: str, vin: str) -> str | None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT model FROM vehicles WHERE vin = %s", (vin,))
        row = await cur.fetchone()
        return None if row is None else str(row[0])
