"""End to end with the real in-car unit (device_sim): API -> gateway -> broker -> unit -> CAN.

The unit's Ed25519 check is the one the car side must do (docs/commands.md, "What the car
does"): until device_sim ships its own verifier, `Ed25519Verifier` below plays that part through
device_sim's `CommandVerifier` port, trusting exactly the gateway's public key by key id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device_sim.canbus import PythonCanBus
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.outbox import OutboxStore
from device_sim.profiles import load_profile
from device_sim.settings import MqttSettings, UnitSettings
from device_sim.unit import TelematicsUnit
from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles, load_public_key
from gateway.devstack import BrokerAccount, MosquittoBroker, random_vin
from gateway.devstack.testclient import MqttTestClient
from schemas import CommandMessage, command_topic
from tests.integration.command_support import (
    api,
    command_gateway_settings,
    make_keys,
    make_token,
    wait_registered,
    wait_status,
)
from tests.integration.device_support import wait_until
from tests.integration.ingest_support import fetch, running_gateway

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 20.0


class Ed25519Verifier:
    """A car's signature check: the key named by key_id must be trusted, the signature valid."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey]) -> None:
        self._trusted = dict(trusted)

    def verify(self, command: CommandMessage) -> bool:
        key = self._trusted.get(command.key_id)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(command.signature, validate=True), command.signing_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass
class RealCar:
    vin: str
    account: BrokerAccount
    state: VehicleState
    unit: TelematicsUnit


@contextlib.asynccontextmanager
async def real_car(
    broker: MosquittoBroker,
    directory: Path,
    keys: KeyPairFiles,
    *,
    vin: str | None = None,
    state: VehicleState | None = None,
) -> AsyncIterator[RealCar]:
    """device_sim's unit and simulated ECUs on back-to-back virtual CAN buses."""
    vin = vin or random_vin()
    password = broker.add_car(vin) if vin not in _accounts else _accounts[vin]
    _accounts[vin] = password
    profile = load_profile("tgw_generic")
    settings = UnitSettings(
        parked_interval_s=0.5, driving_interval_s=0.2, min_interval_s=0.1, confirm_timeout_s=2.0
    )
    mqtt = MqttSettings(
        host=broker.host, port=broker.port, reconnect_initial_s=0.1, reconnect_max_s=0.5
    )
    channel = f"cmd-{vin}-{uuid.uuid4().hex[:6]}"
    state = state or VehicleState(locked=True)
    verifier = Ed25519Verifier({keys.key_id: load_public_key(keys.public_path)})
    async with (
        OutboxStore(directory / f"{vin}.sqlite") as store,
        PythonCanBus("virtual", channel) as ecu_bus,
        PythonCanBus("virtual", channel) as unit_bus,
    ):
        ecus = SimulatedEcus(profile, state, ecu_bus)
        unit = TelematicsUnit(
            vin=vin,
            password=password,
            profile=profile,
            bus=unit_bus,
            outbox=store.vehicle(vin, max_records=settings.queue_max_records),
            mqtt=mqtt,
            settings=settings,
            verifier=verifier,
        )
        periodic = asyncio.create_task(ecus.run_periodic(), name=f"ecus:{vin}")
        run = asyncio.create_task(unit.run(), name=f"unit:{vin}")
        try:
            await asyncio.wait_for(unit.connected.wait(), DEADLINE_S)
            yield RealCar(vin, BrokerAccount(vin, password, broker.host, broker.port), state, unit)
        finally:
            unit.stop()
            try:
                await asyncio.wait_for(run, DEADLINE_S)
            finally:
                periodic.cancel()
                ecus.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await periodic


_accounts: dict[str, str] = {}


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return make_keys(tmp_path / "keys")


async def test_unlock_then_lock_with_the_real_unit_executed_and_verified(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path, keys: KeyPairFiles
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "rita", Role.OPERATOR)
    async with (
        running_gateway(settings),
        real_car(mqtt_broker, tmp_path, keys) as car,
        api(settings, token) as client,
    ):
        await wait_registered(migrated_database, car.vin)
        url = f"/v1/vehicles/{car.vin}/commands"
        unlock = (await client.post(url, json={"action": "unlock"})).json()["command_id"]
        record = await wait_status(client, unlock, {"verified"})
        assert car.state.locked is False  # the body ECU obeyed the frame
        lock = (await client.post(url, json={"action": "lock"})).json()["command_id"]
        locked = await wait_status(client, lock, {"verified"})
        assert car.state.locked is True
    assert [t["status"] for t in record["transitions"]] == [
        "queued",
        "sent",
        "accepted",
        "executed",
        "verified",
    ]
    assert locked["result_state"]["locked"] is True


async def test_lock_with_a_door_open_is_refused_by_the_car_and_the_operator_sees_why(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path, keys: KeyPairFiles
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "sam", Role.OPERATOR)
    state = VehicleState(locked=False, door_fl_open=True)
    async with (
        running_gateway(settings),
        real_car(mqtt_broker, tmp_path, keys, state=state) as car,
        api(settings, token) as client,
    ):
        await wait_registered(migrated_database, car.vin)
        response = await client.post(f"/v1/vehicles/{car.vin}/commands", json={"action": "lock"})
        record = await wait_status(client, response.json()["command_id"], {"rejected"})
    assert record["reason"] == "precondition_failed"
    assert "doors_closed" in record["failed_preconditions"]
    assert car.state.locked is False


async def test_stolen_broker_credentials_cannot_unlock_the_car(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path, keys: KeyPairFiles
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    async with running_gateway(settings), real_car(mqtt_broker, tmp_path, keys) as car:
        await wait_registered(migrated_database, car.vin)
        now = int(time.time() * 1000)
        attacker_key = Ed25519PrivateKey.generate()

        def forged(key_id: str, sign_with: Ed25519PrivateKey | None) -> bytes:
            document = {
                "v": 1,
                "command_id": str(uuid.uuid4()),
                "vin": car.vin,
                "action": "unlock",
                "issued_at": now,
                "expires_at": now + 30_000,
                "nonce": secrets.token_hex(16),
                "key_id": key_id,
                "signature": "AA==",
            }
            unsigned = CommandMessage.model_validate_json(json.dumps(document))
            if sign_with is not None:
                signature = sign_with.sign(unsigned.signing_bytes())
                document["signature"] = base64.b64encode(signature).decode()
            return json.dumps(document).encode()

        # A gateway's broker password, stolen (an account the broker lets publish commands; not
        # the running gateway's own, whose session the thief would take over): the attacker has
        # no signing key. Neither a made-up signature, nor one with the attacker's own key under
        # the gateway's key id, nor under another key id, unlocks the car.
        thief = BrokerAccount(
            "thief-gw", mqtt_broker.add_gateway("thief-gw"), mqtt_broker.host, mqtt_broker.port
        )
        # The car's own password, stolen: the broker refuses the publish outright. (Connecting
        # with it also takes the car's session over for a moment: the car reconnects.)
        sessions = car.unit.counters.sessions
        with MqttTestClient(car.account, client_id=car.vin) as own:
            refusal = own.publish(command_topic(car.vin), forged(keys.key_id, attacker_key))
        assert refusal.value == 0x87  # not authorized
        await wait_until(
            lambda: car.unit.counters.sessions > sessions and car.unit.connected.is_set(),
            what="the car to reconnect",
        )
        with MqttTestClient(thief) as attacker:
            for payload in (
                forged(keys.key_id, None),
                forged(keys.key_id, attacker_key),
                forged("attacker-key", attacker_key),
            ):
                assert attacker.publish(command_topic(car.vin), payload).value == 0
        await wait_until(lambda: car.unit.counters.commands_rejected >= 3, what="three rejections")
        assert car.unit.counters.commands_executed == 0
        assert car.state.locked is True
        # The car's rejections reach the gateway as results for commands it never sent (kept
        # as dead letters; waited for here, before the gateway stops).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = await fetch(
                migrated_database,
                "SELECT count(*) FROM dead_letters WHERE reason = 'unknown_command'",
            )
            if rows[0][0] >= 3:
                break
            await asyncio.sleep(0.05)
    assert rows[0][0] >= 3


async def test_offline_car_does_not_execute_an_expired_unlock_when_it_returns(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path, keys: KeyPairFiles
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys, expiry_grace_s=0.5)
    token = await make_token(migrated_database, "tom", Role.OPERATOR)
    vin = random_vin()
    async with running_gateway(settings), api(settings, token) as client:
        # Online once (session and capabilities known), then gone.
        async with real_car(mqtt_broker, tmp_path, keys, vin=vin):
            await wait_registered(migrated_database, vin)
        response = await client.post(
            f"/v1/vehicles/{vin}/commands", json={"action": "unlock", "ttl_s": 2}
        )
        command_id = response.json()["command_id"]
        await wait_status(client, command_id, {"expired"}, timeout_s=15)
        async with real_car(mqtt_broker, tmp_path, keys, vin=vin) as back:
            await asyncio.sleep(2.0)
            assert back.unit.counters.commands_received == 0
            assert back.state.locked is True
        record = (await client.get(f"/v1/commands/{command_id}")).json()
    assert record["status"] == "expired"
    assert record["late_outcome"] is None
