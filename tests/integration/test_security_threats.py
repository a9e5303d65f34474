"""The threat model, tested against the real broker, gateway, database and in-car unit.

Cars here are provisioned the production way (`Provisioner`: password file + reload, dynamic-
security client, per-car signing key, configuration file). docs/security.md points at each test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.reasoncodes import ReasonCode

from gateway.auth import Role, TokenStore
from gateway.commands.signing import CommandSigner, load_signing_key
from gateway.config import Settings
from gateway.devstack import BrokerAccount, MosquittoBroker, MqttTestClient, connack_reason
from gateway.provisioning.dynsec import CONTROL_TOPIC, DynsecAdmin
from gateway.provisioning.service import CarRequest, Provisioner
from schemas import (
    CommandAction,
    CommandMessage,
    CommandResultMessage,
    TopicKind,
    command_topic,
    shared_subscription,
    vehicle_topic,
)
from schemas.vin import parse_vin
from tests.integration.command_support import api, make_token
from tests.integration.ingest_support import (
    fetch,
    gateway_settings,
    now_ms,
    running_gateway,
    telemetry,
    wait_for_value,
)
from tests.integration.security_support import (
    car_account,
    provisioned_car,
    provisioning_settings,
    wait_http,
)

pytestmark = pytest.mark.timeout(180)

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
GRANTED_QOS_1 = 0x01
_VINS = iter(f"WVWZZZ1KZ{n:08d}" for n in range(10_000_000, 99_999_999, 7919))


@dataclass
class Fleet:
    broker: MosquittoBroker
    dsn: str
    settings: Settings
    config_dir: Path
    a: BrokerAccount
    b: BrokerAccount

    def config(self, vin: str) -> Path:
        return self.config_dir / f"{vin}.toml"


@pytest.fixture
async def fleet(private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path) -> Fleet:
    settings = provisioning_settings(private_broker, migrated_database, tmp_path / "keys")
    vins = [parse_vin(next(_VINS)), parse_vin(next(_VINS))]
    config_dir = tmp_path / "cars"
    await Provisioner(settings, actor="test").provision(
        [CarRequest(vin, "tgw_generic", config_dir / f"{vin}.toml") for vin in vins]
    )
    accounts = [car_account(config_dir / f"{vin}.toml", vin) for vin in vins]
    return Fleet(private_broker, migrated_database, settings, config_dir, *accounts)


def _values(codes: list[ReasonCode]) -> list[int]:
    return [int(code.value) for code in codes]


def _telemetry(vin: str, seq: int = 0) -> bytes:
    return json.dumps(telemetry(vin, seq, now_ms())).encode()


# -- broker: a car's credentials reach its own topics only --------------------------------------


async def test_car_cannot_publish_on_another_cars_topics_and_nothing_is_stored(
    fleet: Fleet,
) -> None:
    settings = gateway_settings(fleet.broker, fleet.dsn)
    async with running_gateway(settings):
        with MqttTestClient(fleet.a) as car_a:
            for kind in TopicKind:
                refused = car_a.publish(
                    vehicle_topic(fleet.b.username, kind), _telemetry(fleet.b.username)
                )
                assert refused.value == NOT_AUTHORIZED, kind
            # Control: A's own telemetry is stored (everything before it was handled already).
            assert (
                car_a.publish(
                    vehicle_topic(fleet.a.username, TopicKind.TELEMETRY),
                    _telemetry(fleet.a.username),
                ).value
                == 0
            )
        await wait_for_value(
            fleet.dsn, "SELECT count(*) FROM telemetry WHERE vin = %s", (fleet.a.username,), 1
        )
    for table in ("telemetry", "dead_letters"):
        rows = await fetch(
            fleet.dsn, f"SELECT count(*) FROM {table} WHERE vin = %s", (fleet.b.username,)
        )
        assert rows == [(0,)], table


def test_car_cannot_subscribe_to_other_cars_or_wildcards(fleet: Fleet) -> None:
    gateway = BrokerAccount(
        (name := f"gw-{uuid.uuid4().hex[:6]}"),
        fleet.broker.add_gateway(name),
        fleet.broker.host,
        fleet.broker.port,
    )
    a, b = fleet.a.username, fleet.b.username
    with MqttTestClient(gateway) as gw, MqttTestClient(fleet.a) as car_a:
        refused = car_a.subscribe(
            "#",
            "tgw/#",
            "tgw/v1/vehicles/+/telemetry",
            vehicle_topic(b, TopicKind.TELEMETRY),
            shared_subscription(TopicKind.TELEMETRY),
            f"$share/other/{vehicle_topic(b, TopicKind.EVENTS)}",
            "$CONTROL/#",
            "$SYS/#",
        )
        assert _values(refused) == [NOT_AUTHORIZED] * 8
        # Commands topics may be subscribed (the plugin's role), but only its own are delivered.
        granted = car_a.subscribe(command_topic(b), "tgw/v1/vehicles/+/commands", command_topic(a))
        assert _values(granted) == [GRANTED_QOS_1] * 3
        assert gw.publish(command_topic(b), b"B's unlock").value in {0, 0x10}
        assert gw.publish(command_topic(a), b"A's own").value == 0
        assert {m.payload for m in car_a.messages_until(b"A's own")} == {b"A's own"}


def test_anonymous_and_wrong_or_borrowed_passwords_are_refused(fleet: Fleet) -> None:
    broker = fleet.broker
    refused = {NOT_AUTHORIZED, BAD_CREDENTIALS}
    anonymous = connack_reason(broker.host, broker.port, None, None)
    assert anonymous is not None
    assert anonymous.value in refused
    attempts = [
        (fleet.a.username, "wrong"),
        (fleet.a.username, ""),
        (fleet.b.username, fleet.a.password),  # A's password for B
        (broker.gateway_username, fleet.a.password),  # ... for the gateway
        (broker.admin_account.username, fleet.a.password),  # ... for the provisioning account
        ("tgw-provision-probe", fleet.a.password),
        (fleet.a.username.lower(), fleet.a.password),  # usernames are exact
    ]
    for username, password in attempts:
        reason = connack_reason(broker.host, broker.port, username, password)
        assert reason is not None
        assert reason.value in refused, username
    assert connack_reason(broker.host, broker.port, fleet.a.username, fleet.a.password) == 0


def test_car_credentials_cannot_act_as_the_gateway_or_the_admin(fleet: Fleet) -> None:
    a, b = fleet.a.username, fleet.b.username
    with MqttTestClient(fleet.a) as car_a:
        assert car_a.publish(command_topic(b), b'{"forged": true}').value == NOT_AUTHORIZED
        assert car_a.publish(command_topic(a), b'{"forged": true}').value == NOT_AUTHORIZED
        assert _values(car_a.subscribe(shared_subscription(TopicKind.COMMAND_RESULTS))) == [
            NOT_AUTHORIZED
        ]
        # The dynamic-security admin API: refused, and it did nothing.
        evil = json.dumps(
            {"commands": [{"command": "createClient", "username": "evil", "password": "x"}]}
        ).encode()
        assert car_a.publish(CONTROL_TOPIC, evil).value == NOT_AUTHORIZED
    admin = fleet.broker.admin_account
    with DynsecAdmin(fleet.broker.endpoint, admin.username, admin.password) as control:
        assert control.client_roles("evil") is None
        assert control.client_roles(a) == ("tgw-car",)


async def test_payload_claiming_another_vin_is_a_dead_letter(fleet: Fleet) -> None:
    settings = gateway_settings(fleet.broker, fleet.dsn)
    async with running_gateway(settings):
        with MqttTestClient(fleet.a) as car_a:
            topic = vehicle_topic(fleet.a.username, TopicKind.TELEMETRY)
            assert car_a.publish(topic, _telemetry(fleet.b.username)).value == 0
        await wait_for_value(
            fleet.dsn,
            "SELECT reason FROM dead_letters WHERE vin = %s",
            (fleet.a.username,),
            "vin_mismatch",
        )
    assert await fetch(
        fleet.dsn, "SELECT count(*) FROM telemetry WHERE vin = %s", (fleet.b.username,)
    ) == [(0,)]


# -- the car: only commands signed by a key it trusts, each at most once ------------------------


def _command(vin: str, action: CommandAction = CommandAction.UNLOCK) -> dict[str, object]:
    issued = now_ms()
    return {
        "command_id": uuid.uuid4(),
        "vin": vin,
        "action": action,
        "issued_at_ms": issued,
        "expires_at_ms": issued + 30_000,
        "nonce": secrets.token_hex(16),
    }


def _resigned(command: CommandMessage, key: Ed25519PrivateKey, **changes: object) -> bytes:
    altered = command.model_copy(update=changes)
    signature = base64.b64encode(key.sign(altered.signing_bytes())).decode()
    return altered.model_copy(update={"signature": signature}).model_dump_json().encode()


async def test_car_refuses_replayed_resigned_and_foreign_key_commands(
    fleet: Fleet, tmp_path: Path
) -> None:
    vin = fleet.a.username
    commands = fleet.settings.commands
    assert commands.signing_key_file is not None
    signer = CommandSigner(load_signing_key(commands.signing_key_file), commands.vehicle_keys_dir)
    fleet_key = load_signing_key(commands.signing_key_file, commands.signing_key_id)
    observer = BrokerAccount(
        (name := f"gw-{uuid.uuid4().hex[:6]}"),
        fleet.broker.add_gateway(name),
        fleet.broker.host,
        fleet.broker.port,
    )
    async with provisioned_car(fleet.config(vin), vin, tmp_path / "queue") as car:
        # The car trusts exactly its own key (per-car keys), not the fleet key.
        assert set(car.settings.commands.trusted_keys) == {signer.key_for(vin).key_id}
        with MqttTestClient(observer) as gw:
            gw.subscribe(vehicle_topic(vin, TopicKind.COMMAND_RESULTS))

            def result(command_id: str, outcomes: set[str]) -> CommandResultMessage:
                """The car's next answer to `command_id` with one of `outcomes` (blocking: run
                it in a thread, the car lives on this event loop)."""
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    message = gw.next_message(timeout_s=20)
                    found = CommandResultMessage.model_validate_json(message.payload)
                    if str(found.command_id) == command_id and found.outcome in outcomes:
                        return found
                raise AssertionError("the car did not answer")

            def answer(payload: bytes) -> CommandResultMessage:
                """Publish a command; the car's first answer to it (accepted or rejected)."""
                assert gw.publish(command_topic(vin), payload).value == 0
                return result(json.loads(payload)["command_id"], {"accepted", "rejected"})

            genuine = signer.sign(**_command(vin))  # type: ignore[arg-type]
            payload = genuine.model_dump_json().encode()
            assert (await asyncio.to_thread(answer, payload)).outcome == "accepted"
            await asyncio.to_thread(result, str(genuine.command_id), {"executed"})
            assert car.state.locked is False
            car.state.locked = True  # someone locked it by hand

            # The same bytes again (captured off the wire). The car may answer `replay`, or
            # repeat its earlier answer (protocol 9.4: a redelivery); it never acts again.
            replay = await asyncio.to_thread(answer, payload)
            assert (replay.outcome, replay.reason) in {("rejected", "replay"), ("accepted", None)}
            # A fresh command id, re-signed with an attacker's key under the car's key id.
            attacker = Ed25519PrivateKey.generate()
            forged = _resigned(
                genuine, attacker, command_id=uuid.uuid4(), nonce=secrets.token_hex(16)
            )
            assert (await asyncio.to_thread(answer, forged)).reason == "bad_signature"
            # Signed by a key the gateway really has, but not one this car trusts.
            fleet_signed = _resigned(
                genuine,
                fleet_key.private_key,
                command_id=uuid.uuid4(),
                nonce=secrets.token_hex(16),
                key_id=fleet_key.key_id,
            )
            assert (await asyncio.to_thread(answer, fleet_signed)).reason == "bad_signature"
            # B's genuine command, delivered to A: B's key is not A's.
            other = signer.sign(**_command(fleet.b.username))  # type: ignore[arg-type]
            assert (
                await asyncio.to_thread(answer, other.model_dump_json().encode())
            ).reason == "bad_signature"
            # Tampering with a signed field (the action) breaks the signature.
            tampered = genuine.model_copy(
                update={
                    "command_id": uuid.uuid4(),
                    "action": CommandAction.UNLOCK_AND_ENABLE_DRIVING,
                }
            )
            assert (
                await asyncio.to_thread(answer, tampered.model_dump_json().encode())
            ).reason == "bad_signature"
            # An expired, genuinely signed command: refused on the car's own clock.
            old = _command(vin)
            old["issued_at_ms"] = now_ms() - 120_000
            old["expires_at_ms"] = now_ms() - 60_000
            late = signer.sign(**old)  # type: ignore[arg-type]
            assert (
                await asyncio.to_thread(answer, late.model_dump_json().encode())
            ).reason == "expired"
        assert car.state.locked is True  # none of them unlocked the car
        assert car.unit.counters.commands_executed == 1


# -- the operator API: tokens, roles, revocation, rate limits -----------------------------------


async def _register(dsn: str, *vins: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for vin in vins:
            await conn.execute(
                "INSERT INTO vehicles (vin, capabilities) VALUES (%s, %s) "
                "ON CONFLICT (vin) DO UPDATE SET capabilities = EXCLUDED.capabilities",
                (vin, ["lock", "unlock", "request_state"]),
            )


async def test_api_needs_a_live_token_with_the_right_role(fleet: Fleet) -> None:
    base = gateway_settings(fleet.broker, fleet.dsn)
    settings = base.model_copy(update={"commands": fleet.settings.commands})
    vin = fleet.a.username
    await _register(fleet.dsn, vin)
    viewer = await make_token(fleet.dsn, "vera", Role.VIEWER)
    operator = await make_token(fleet.dsn, "otto", Role.OPERATOR)
    url = f"/v1/vehicles/{vin}/commands"
    body = {"action": "request_state"}
    async with running_gateway(settings):
        async with api(settings) as anonymous:
            await wait_http(anonymous)
            response = await anonymous.post(url, json=body)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
            assert (await anonymous.get(url)).status_code == 401
        async with api(settings, "tgw_" + "x" * 43) as made_up:
            assert (await made_up.post(url, json=body)).status_code == 401
        async with api(settings, viewer) as client:
            assert (await client.get(url)).status_code == 200  # viewers may read ...
            refused = await client.post(url, json=body)  # ... not command
            assert refused.status_code == 403
            assert refused.json()["type"].endswith("/forbidden")
        async with api(settings, operator) as client:
            assert (await client.post(url, json=body)).status_code == 202
            async with await psycopg.AsyncConnection.connect(fleet.dsn, autocommit=True) as conn:
                await TokenStore(conn).revoke("otto", revoked_by="test")
            revoked = await client.post(url, json=body)
            assert revoked.status_code == 401  # at once: no cache
            assert revoked.json()["type"].endswith("/invalid-token")
    rows = await fetch(
        fleet.dsn, "SELECT requested_by, action FROM commands WHERE vin = %s", (vin,)
    )
    assert rows == [("otto", "request_state")]  # the only command, and who sent it


async def test_command_rate_limits_per_operator_and_per_car(fleet: Fleet) -> None:
    base = gateway_settings(fleet.broker, fleet.dsn)
    commands = fleet.settings.commands.model_copy(
        update={
            "rate_limit_per_vehicle": 3,
            "rate_limit_per_operator": 5,
            "rate_limit_window_s": 600,
        }
    )
    settings = base.model_copy(update={"commands": commands})
    cars = [parse_vin(next(_VINS)) for _ in range(3)]
    await _register(fleet.dsn, *cars)
    script = await make_token(fleet.dsn, "runaway-script", Role.OPERATOR)
    colleague = await make_token(fleet.dsn, "colleague", Role.OPERATOR)
    async with running_gateway(settings), api(settings, script) as client:
        await wait_http(client)

        async def send(vin: str, key: str | None = None) -> int:
            body: dict[str, object] = {"action": "request_state"}
            if key is not None:
                body["idempotency_key"] = key
            response = await client.post(f"/v1/vehicles/{vin}/commands", json=body)
            if response.status_code == 429:
                problem = response.json()
                assert problem["type"].endswith("/rate-limited")
                assert problem["status"] == 429
                assert int(response.headers["retry-after"]) >= 1
                assert response.headers["content-type"] == "application/problem+json"
            return response.status_code

        # Per car: three to the first car, the fourth is refused.
        assert [await send(cars[0], f"k{i}") for i in range(3)] == [202] * 3
        limited = await client.post(f"/v1/vehicles/{cars[0]}/commands", json={"action": "lock"})
        assert limited.status_code == 429
        assert cars[0] in limited.json()["detail"]
        # A repeated idempotency key creates nothing, so it is not limited.
        assert await send(cars[0], "k0") == 202
        # Per operator: two more to another car make five; the sixth, to a third car, is refused.
        assert [await send(cars[1]) for _ in range(2)] == [202, 202]
        assert await send(cars[2]) == 429
        # Another operator is not held back by the script.
        async with api(settings, colleague) as other:
            response = await other.post(
                f"/v1/vehicles/{cars[2]}/commands", json={"action": "request_state"}
            )
            assert response.status_code == 202
    created = await fetch(fleet.dsn, "SELECT count(*) FROM commands WHERE vin = ANY(%s)", (cars,))
    assert created == [(6,)]
