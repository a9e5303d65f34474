"""Helpers for the security tests: settings that point provisioning at a private broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from device_sim.canbus import PythonCanBus
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.outbox import OutboxStore
from device_sim.profiles import load_profile
from device_sim.settings import CONFIG_FILE_ENV, SimSettings, UnitSettings
from device_sim.unit import TelematicsUnit
from device_sim.verifier import verifier_for
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


def load_car_settings(config_path: Path) -> SimSettings:
    """device_sim's settings exactly as the in-car unit reads its provisioned file."""
    previous = os.environ.get(CONFIG_FILE_ENV)
    os.environ[CONFIG_FILE_ENV] = str(config_path)
    try:
        return SimSettings()
    finally:
        if previous is None:
            del os.environ[CONFIG_FILE_ENV]
        else:
            os.environ[CONFIG_FILE_ENV] = previous


@dataclass
class ProvisionedCar:
    vin: str
    settings: SimSettings
    state: VehicleState
    unit: TelematicsUnit


@contextlib.asynccontextmanager
async def provisioned_car(
    config_path: Path,
    vin: str,
    queue_dir: Path,
    *,
    state: VehicleState | None = None,
    wait_connected: bool = True,
) -> AsyncIterator[ProvisionedCar]:
    """device_sim's unit configured by its provisioned file (broker, password(s), TLS, trusted
    keys, profile), with simulated ECUs on a back-to-back virtual CAN bus."""
    settings = load_car_settings(config_path)
    mqtt = settings.mqtt.model_copy(
        update={"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "timeout_s": 5.0}
    )
    profile = load_profile(settings.unit.profile)
    unit_settings = UnitSettings(
        profile=settings.unit.profile,
        parked_interval_s=0.5,
        driving_interval_s=0.2,
        min_interval_s=0.1,
        confirm_timeout_s=2.0,
    )
    channel = f"sec-{vin}-{uuid.uuid4().hex[:6]}"
    state = state or VehicleState(locked=True)
    password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
    async with (
        OutboxStore(queue_dir / f"{vin}.sqlite") as store,
        PythonCanBus("virtual", channel) as ecu_bus,
        PythonCanBus("virtual", channel) as unit_bus,
    ):
        ecus = SimulatedEcus(profile, state, ecu_bus)
        unit = TelematicsUnit(
            vin=vin,
            password=password,
            profile=profile,
            bus=unit_bus,
            outbox=store.vehicle(vin, max_records=unit_settings.queue_max_records),
            mqtt=mqtt,
            settings=unit_settings,
            verifier=verifier_for(settings.commands.trusted_keys),
        )
        periodic = asyncio.create_task(ecus.run_periodic(), name=f"ecus:{vin}")
        run = asyncio.create_task(unit.run(), name=f"unit:{vin}")
        try:
            if wait_connected:
                await asyncio.wait_for(unit.connected.wait(), WAIT_S)
            yield ProvisionedCar(vin, settings, state, unit)
        finally:
            unit.stop()
            try:
                await asyncio.wait_for(run, WAIT_S)
            finally:
                periodic.cancel()
                ecus.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await periodic


async def wait_http(client: httpx.AsyncClient) -> None:
    """Until the gateway's HTTP server answers (it starts just after the gateway is ready)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            await client.get("/health")
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            return
