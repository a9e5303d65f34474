"""Remote commands on the real broker and database, with a car simulated by an MQTT responder.

Covers the gateway side of the lifecycle: executed and verified, rejected with its reason, an
offline car's command expiring and never delivered late, time-outs, one command in flight per
car, a restart mid-command, idempotency, capabilities, results that belong to no command, the
audit trail, and the API's roles.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles, load_public_key
from gateway.config import Settings
from gateway.devstack import CarCredentialsFactory, MosquittoBroker
from gateway.devstack.testclient import MqttTestClient
from schemas import TopicKind, vehicle_topic
from tests.integration.command_support import (
    CarResponder,
    Reply,
    accepts_only,
    api,
    command_gateway_settings,
    make_keys,
    make_token,
    registered_car,
    rejects,
    responding_car,
    silent,
    wait_registered,
    wait_status,
)
from tests.integration.ingest_support import fetch, running_gateway

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return make_keys(tmp_path / "keys")


async def test_lock_is_executed_then_verified_by_telemetry(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "alice", Role.OPERATOR)
    account = car_credentials()
    async with (
        running_gateway(settings),
        registered_car(account, keys, dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        response = await client.post(f"/v1/vehicles/{car.vin}/commands", json={"action": "lock"})
        assert response.status_code == 202, response.text
        created = response.json()
        command_id = created["command_id"]
        assert response.headers["location"] == f"/v1/commands/{command_id}"
        assert created["status"] == "queued"
        assert created["requested_by"] == "alice"
        record = await wait_status(client, command_id, {"executed", "verified"})
        assert record["result_state"] == {"locked": True}
        # Later telemetry shows the lock engaged: verified.
        await asyncio.to_thread(car.telemetry, 1, locked=True)
        record = await wait_status(client, command_id, {"verified"})

    statuses = [t["status"] for t in record["transitions"]]
    assert statuses == ["queued", "sent", "accepted", "executed", "verified"]
    actors = [t["actor"] for t in record["transitions"]]
    assert actors == ["operator:alice", "gateway", f"car:{car.vin}", f"car:{car.vin}", "gateway"]
    stamps = [t["at"] for t in record["transitions"]]
    assert stamps == sorted(stamps)
    assert record["key_id"] == keys.key_id

    # What the car received: one signed command with the MQTT 5 properties of protocol 9.1.
    assert len(car.received) == 1
    received = car.received[0]
    assert received.signature_ok
    assert received.command is not None
    assert str(received.command.command_id) == command_id
    assert received.command.key_id == keys.key_id
    assert received.response_topic == vehicle_topic(car.vin, TopicKind.COMMAND_RESULTS)
    assert received.correlation == uuid.UUID(command_id).bytes
    assert received.expiry_s is not None
    assert 1 <= received.expiry_s <= 30
    ttl_ms = received.command.expires_at - received.command.issued_at
    assert ttl_ms == 30_000  # the default for lock

    # Audited: every transition, with the operator's identity.
    audit = await fetch(
        migrated_database,
        "SELECT actor, action, detail->>'command_id', detail->>'by' FROM audit_log "
        "WHERE target = %s ORDER BY id",
        (car.vin,),
    )
    assert [(row[0], row[1]) for row in audit] == [
        ("alice", "command.queued"),
        ("alice", "command.sent"),
        ("alice", "command.accepted"),
        ("alice", "command.executed"),
        ("alice", "command.verified"),
    ]
    assert {row[2] for row in audit} == {command_id}


async def test_rejection_reaches_the_operator_with_its_reason(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "bob", Role.OPERATOR)
    behaviour = rejects("precondition_failed", "doors_closed")
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, behaviour, dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        response = await client.post(f"/v1/vehicles/{car.vin}/commands", json={"action": "lock"})
        command_id = response.json()["command_id"]
        record = await wait_status(client, command_id, {"rejected"})
        # Nothing after a final state, even a while later.
        await asyncio.sleep(0.5)
        record = (await client.get(f"/v1/commands/{command_id}")).json()
    assert record["status"] == "rejected"
    assert record["reason"] == "precondition_failed"
    assert record["failed_preconditions"] == ["doors_closed"]
    assert record["advice"] == ["a door is open: close it, then try again"]
    assert [t["status"] for t in record["transitions"]] == ["queued", "sent", "rejected"]


async def test_offline_car_command_expires_and_is_never_delivered_late(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys, expiry_grace_s=0.5)
    token = await make_token(migrated_database, "carol", Role.OPERATOR)
    car = CarResponder(car_credentials(), make_public(keys))
    # The car was online once (its session and subscription stay at the broker), then left.
    await asyncio.to_thread(car.connect)
    await asyncio.to_thread(car.birth)
    await asyncio.to_thread(car.disconnect)
    async with running_gateway(settings), api(settings, token) as client:
        await wait_registered(migrated_database, car.vin)
        response = await client.post(
            f"/v1/vehicles/{car.vin}/commands", json={"action": "unlock", "ttl_s": 2}
        )
        command_id = response.json()["command_id"]
        record = await wait_status(client, command_id, {"expired"}, timeout_s=15)
        assert record["reason"] == "deadline_passed"
        # The broker took it for the car's session (sent), but the car never took it.
        assert [t["status"] for t in record["transitions"]] == ["queued", "sent", "expired"]
        # The car comes back after the deadline: the broker dropped the command (message
        # expiry), so nothing arrives, and nothing can be executed late.
        await asyncio.to_thread(car.connect)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(car.disconnect)
    assert car.received == []


async def test_car_without_a_session_gets_nothing_and_the_command_expires_unsent(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "dave", Role.OPERATOR)
    account = car_credentials()
    birth = json.dumps(
        {
            "v": 1,
            "vin": account.username,
            "online": True,
            "reason": "connected",
            "ts": int(time.time() * 1000),
            "boot_id": "b",
            "capabilities": ["unlock"],
        }
    ).encode()
    async with running_gateway(settings), api(settings, token) as client:
        # Registered through a birth from a clean session that never subscribed to commands.
        with MqttTestClient(account) as birth_only:
            birth_only.publish(vehicle_topic(account.username, TopicKind.STATUS), birth)
        await wait_registered(migrated_database, account.username)
        response = await client.post(
            f"/v1/vehicles/{account.username}/commands", json={"action": "unlock", "ttl_s": 2}
        )
        command_id = response.json()["command_id"]
        record = await wait_status(client, command_id, {"expired"}, timeout_s=15)
    assert [t["status"] for t in record["transitions"]] == ["queued", "expired"]
    # Offered to the broker, which answered "no matching subscribers" each time: never sent.
    assert record["attempts"] >= 1


async def test_accepted_without_final_answer_times_out(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys, answer_timeout_s=1.0)
    token = await make_token(migrated_database, "erin", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, accepts_only(), dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        response = await client.post(f"/v1/vehicles/{car.vin}/commands", json={"action": "lock"})
        command_id = response.json()["command_id"]
        record = await wait_status(client, command_id, {"timed_out"}, timeout_s=15)
        assert record["reason"] == "no_final_answer"
        # The car answers after all: kept as a late outcome, the final state stays.
        await asyncio.to_thread(car.result, command_id, Reply("executed"))
        await asyncio.sleep(0.5)
        record = (await client.get(f"/v1/commands/{command_id}")).json()
    assert record["status"] == "timed_out"
    assert record["late_outcome"] == "executed"
    assert [t["status"] for t in record["transitions"]] == [
        "queued",
        "sent",
        "accepted",
        "timed_out",
    ]
    late = await fetch(
        migrated_database,
        "SELECT count(*) FROM audit_log WHERE action = 'command.late_result' AND target = %s",
        (car.vin,),
    )
    assert late[0][0] == 1


async def test_one_command_in_flight_per_car_the_next_waits_in_order(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "frank", Role.OPERATOR)
    # Each command takes the car a second.
    slow = lambda _: [Reply("accepted"), Reply("executed", delay_s=1.0)]  # noqa: E731
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, slow, dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        ids = []
        for action in ("unlock", "lock", "request_state"):
            response = await client.post(
                f"/v1/vehicles/{car.vin}/commands", json={"action": action}
            )
            assert response.status_code == 202
            ids.append(response.json()["command_id"])
        await wait_status(client, ids[0], {"accepted"})
        # While the first is with the car, the others wait.
        for waiting in ids[1:]:
            assert (await client.get(f"/v1/commands/{waiting}")).json()["status"] == "queued"
        records = [await wait_status(client, i, {"executed", "verified"}) for i in ids]
    # In order, never overlapping: each sent after the previous one was executed.
    for before, after in itertools.pairwise(records):
        assert before["finished_at"] <= after["sent_at"]
    assert [str(r.command.command_id) for r in car.received if r.command] == ids


async def test_idempotency_key_returns_the_same_command_and_sends_it_once(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "gina", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        url = f"/v1/vehicles/{car.vin}/commands"
        first = await client.post(url, json={"action": "unlock", "idempotency_key": "rental-42"})
        again = await client.post(url, json={"action": "unlock", "idempotency_key": "rental-42"})
        header = await client.post(
            url, json={"action": "unlock"}, headers={"Idempotency-Key": "rental-42"}
        )
        assert first.status_code == again.status_code == header.status_code == 202
        command_id = first.json()["command_id"]
        assert again.json()["command_id"] == header.json()["command_id"] == command_id
        assert again.headers["idempotent-replayed"] == "true"
        await wait_status(client, command_id, {"executed", "verified"})
        # After it finished, the same key still names it, and sends nothing new.
        later = await client.post(url, json={"action": "unlock", "idempotency_key": "rental-42"})
        assert later.json()["command_id"] == command_id
        # The same key for another request is a mistake, and said so.
        other = await client.post(url, json={"action": "lock", "idempotency_key": "rental-42"})
        assert other.status_code == 409
        assert other.json()["type"].endswith("/idempotency-key-reused")
        await asyncio.sleep(0.3)
    assert len(car.received) == 1
    rows = await fetch(migrated_database, "SELECT count(*) FROM commands")
    assert rows[0][0] == 1


async def test_capabilities_and_unknown_cars_are_refused_at_once(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "hank", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(
            car_credentials(), keys, capabilities=("lock", "unlock"), dsn=migrated_database
        ) as car,
        api(settings, token) as client,
    ):
        response = await client.post(
            f"/v1/vehicles/{car.vin}/commands", json={"action": "unlock_and_enable_driving"}
        )
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"].endswith("/unsupported-action")
        assert "cannot do unlock_and_enable_driving" in problem["detail"]
        assert "lock, unlock" in problem["detail"]
        unknown = await client.post(
            "/v1/vehicles/WVWZZZ1JZXW999999/commands", json={"action": "lock"}
        )
        assert unknown.status_code == 404
        assert unknown.json()["type"].endswith("/unknown-vehicle")
        bad_vin = await client.post("/v1/vehicles/NOT-A-VIN/commands", json={"action": "lock"})
        assert bad_vin.status_code == 422
        bad_action = await client.post(
            f"/v1/vehicles/{car.vin}/commands", json={"action": "self_destruct"}
        )
        assert bad_action.status_code == 422
        assert bad_action.json()["errors"][0]["field"] == "body.action"
        bad_ttl = await client.post(
            f"/v1/vehicles/{car.vin}/commands", json={"action": "lock", "ttl_s": 3600}
        )
        assert bad_ttl.status_code == 422
    assert car.received == []
    rows = await fetch(migrated_database, "SELECT count(*) FROM commands")
    assert rows[0][0] == 0


async def test_results_for_unknown_commands_or_from_another_car_are_dead_letters(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "ivy", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, silent(), dsn=migrated_database) as car_a,
        registered_car(car_credentials(), keys, silent(), dsn=migrated_database) as car_b,
        api(settings, token) as client,
    ):
        response = await client.post(f"/v1/vehicles/{car_a.vin}/commands", json={"action": "lock"})
        command_id = response.json()["command_id"]
        await wait_status(client, command_id, {"sent"})
        # Car B claims to have executed A's command: never applied.
        await asyncio.to_thread(car_b.result, command_id, Reply("executed"))
        # A result for a command nobody sent.
        await asyncio.to_thread(car_a.result, uuid.uuid4(), Reply("executed"))
        # Not a result at all.
        await asyncio.to_thread(
            car_a.publish_raw, vehicle_topic(car_a.vin, TopicKind.COMMAND_RESULTS), b"{oops"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = await fetch(
                migrated_database, "SELECT reason, vin FROM dead_letters ORDER BY id"
            )
            if len(rows) >= 3:
                break
            await asyncio.sleep(0.05)
        record = (await client.get(f"/v1/commands/{command_id}")).json()
    assert record["status"] == "sent"
    assert sorted(rows) == sorted(
        [("vin_mismatch", car_b.vin), ("unknown_command", car_a.vin), ("not_json", car_a.vin)]
    )


async def test_api_roles_and_tokens(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    viewer = await make_token(migrated_database, "viola", Role.VIEWER)
    operator = await make_token(migrated_database, "otto", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, dsn=migrated_database) as car,
    ):
        url = f"/v1/vehicles/{car.vin}/commands"
        async with api(settings) as anonymous:
            response = await anonymous.post(url, json={"action": "lock"})
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["type"].endswith("/not-authenticated")
            assert (await anonymous.get(url)).status_code == 401
        async with api(settings, "tgw_not-a-real-token") as forged:
            assert (await forged.get(url)).status_code == 401
        async with api(settings, viewer) as client:
            response = await client.post(url, json={"action": "lock"})
            assert response.status_code == 403
            assert "role viewer" in response.json()["detail"]
            assert (await client.get(url)).status_code == 200
        async with api(settings, operator) as client:
            assert (await client.post(url, json={"action": "lock"})).status_code == 202
            # Revoked: refused at once.
            import psycopg  # noqa: PLC0415

            from gateway.auth import TokenStore  # noqa: PLC0415

            async with await psycopg.AsyncConnection.connect(
                migrated_database, autocommit=True
            ) as conn:
                await TokenStore(conn).revoke("otto", revoked_by="test")
            response = await client.post(url, json={"action": "unlock"})
            assert response.status_code == 401
            assert response.json()["type"].endswith("/invalid-token")
    stored = await fetch(migrated_database, "SELECT token_hash FROM api_tokens")
    assert all(operator not in row[0] and viewer not in row[0] for row in stored)


def make_public(keys: KeyPairFiles) -> Ed25519PublicKey:
    return load_public_key(keys.public_path)


async def test_gateway_restart_mid_command_still_ends_in_one_final_state(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    # Same settings (same broker account and session) for both runs of the gateway.
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys, answer_timeout_s=2.0)
    token = await make_token(migrated_database, "jack", Role.OPERATOR)
    async with responding_car(car_credentials(), keys, accepts_only()) as car:
        async with running_gateway(settings), api(settings, token) as client:
            await asyncio.to_thread(car.birth)
            await wait_registered(migrated_database, car.vin)
            url = f"/v1/vehicles/{car.vin}/commands"
            finishing = (await client.post(url, json={"action": "unlock"})).json()["command_id"]
            await wait_status(client, finishing, {"accepted"})
            # A live stream is open when the gateway stops: it must not hold the shutdown up.
            stream = asyncio.create_task(_collect_stream(settings, token, finishing))
            await asyncio.sleep(0.2)
        # The gateway is down. The car finishes the first command meanwhile (its result waits
        # in the gateway's broker session).
        await asyncio.to_thread(car.result, finishing, Reply("executed"))
        async with running_gateway(settings), api(settings, token) as client:
            record = await wait_status(client, finishing, {"executed", "verified"})
            abandoned = (await client.post(url, json={"action": "lock"})).json()["command_id"]
            await wait_status(client, abandoned, {"accepted"})
        # Down again, longer than the answer time-out; the car never answers this one.
        await asyncio.sleep(2.5)
        async with running_gateway(settings), api(settings, token) as client:
            # The sweeper resolves it from the database at start-up.
            other = await wait_status(client, abandoned, {"timed_out"}, timeout_s=10)
    assert stream.done()
    assert [t["status"] for t in record["transitions"]] == [
        "queued",
        "sent",
        "accepted",
        "executed",
    ]
    assert [t["status"] for t in other["transitions"]] == [
        "queued",
        "sent",
        "accepted",
        "timed_out",
    ]
    finals = await fetch(
        migrated_database,
        "SELECT command_id, count(*) FROM command_transitions "
        "WHERE status IN ('rejected', 'executed', 'failed', 'expired', 'timed_out') "
        "GROUP BY command_id",
    )
    assert sorted(count for _, count in finals) == [1, 1]


async def _transitions(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The `transition` events of a server-sent event stream, as they come."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:") and kind == "transition":
            yield json.loads(line[5:])


async def _collect_stream(settings: Settings, token: str, command_id: str) -> list[dict[str, Any]]:
    async with (
        api(settings, token) as client,
        client.stream("GET", f"/v1/commands/{command_id}/events") as response,
    ):
        return [event async for event in _transitions(response)]


async def test_live_stream_shows_each_state_change_until_the_end(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "kim", Role.VIEWER)
    operator = await make_token(migrated_database, "lou", Role.OPERATOR)
    slow = lambda _: [Reply("accepted", delay_s=0.3), Reply("executed", delay_s=0.6)]  # noqa: E731
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, slow, dsn=migrated_database) as car,
        api(settings, operator) as client,
    ):
        response = await client.post(
            f"/v1/vehicles/{car.vin}/commands", json={"action": "request_state"}
        )
        command_id = response.json()["command_id"]
        events = await asyncio.wait_for(_collect_stream(settings, token, command_id), 15)
        # Asked again after the end: the history, then the stream ends at once.
        replay = await asyncio.wait_for(_collect_stream(settings, token, command_id), 5)
        async with api(settings, token) as viewer:
            missing = await viewer.get(f"/v1/commands/{uuid.uuid4()}/events")
    assert [e["status"] for e in events] == ["queued", "sent", "accepted", "executed"]
    assert replay == events
    assert all(e["command_id"] == command_id for e in events)
    assert missing.status_code == 404


async def _follow_all(
    settings: Settings, token: str, params: dict[str, str], until: int
) -> list[dict[str, Any]]:
    """The all-commands stream's transitions, until `until` final ones were seen."""
    events: list[dict[str, Any]] = []
    async with (
        api(settings, token) as client,
        client.stream("GET", "/v1/commands/events", params=params) as response,
    ):
        async for event in _transitions(response):
            events.append(event)
            if sum(e["status"] == "executed" for e in events) == until:
                return events
    raise AssertionError("the stream ended early")


async def test_all_commands_stream_carries_every_transition_in_order(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    viewer = await make_token(migrated_database, "kim", Role.VIEWER)
    operator = await make_token(migrated_database, "lou", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, dsn=migrated_database) as first,
        registered_car(car_credentials(), keys, dsn=migrated_database) as second,
        api(settings, operator) as client,
    ):
        everything = asyncio.create_task(_follow_all(settings, viewer, {}, until=6))
        only_second = asyncio.create_task(_follow_all(settings, viewer, {"vin": second.vin}, 3))
        await asyncio.sleep(0.5)  # both streams subscribed
        # Six commands at once: created together, their events reach the streams in batches.
        responses = await asyncio.gather(
            *(
                client.post(f"/v1/vehicles/{car.vin}/commands", json={"action": "lock"})
                for _ in range(3)
                for car in (first, second)
            )
        )
        ids = [response.json()["command_id"] for response in responses]
        events = await asyncio.wait_for(everything, 20)
        seconds = await asyncio.wait_for(only_second, 20)
    for command_id in ids:
        statuses = [e["status"] for e in events if e["command_id"] == command_id]
        assert statuses == ["queued", "sent", "accepted", "executed"]
    transition_ids = [e["transition_id"] for e in events]
    assert len(set(transition_ids)) == len(transition_ids)  # none twice
    assert {e["vin"] for e in seconds} == {second.vin}
    assert {e["command_id"] for e in seconds} == set(ids[1::2])


async def test_two_gateway_instances_send_each_command_exactly_once(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    first = command_gateway_settings(mqtt_broker, migrated_database, keys)
    second = command_gateway_settings(mqtt_broker, migrated_database, keys)
    # One share group: the two instances split the cars' results between them.
    group = first.mqtt.share_group
    second = second.model_copy(
        update={"mqtt": second.mqtt.model_copy(update={"share_group": group})}
    )
    token = await make_token(migrated_database, "max", Role.OPERATOR)
    async with (
        running_gateway(first),
        running_gateway(second),
        registered_car(car_credentials(), keys, dsn=migrated_database) as car_a,
        registered_car(car_credentials(), keys, dsn=migrated_database) as car_b,
        api(first, token) as client_1,
        api(second, token) as client_2,
    ):
        ids = []
        for index in range(6):
            client = (client_1, client_2)[index % 2]
            car = (car_a, car_b)[index // 3]
            action = ("lock", "unlock")[index % 2]
            response = await client.post(
                f"/v1/vehicles/{car.vin}/commands", json={"action": action}
            )
            assert response.status_code == 202
            ids.append(response.json()["command_id"])
        records = [await wait_status(client_1, i, {"executed", "verified"}) for i in ids]
    received = [str(r.command.command_id) for c in (car_a, car_b) for r in c.received if r.command]
    assert sorted(received) == sorted(ids)  # each exactly once
    for record in records:
        assert [t["status"] for t in record["transitions"]][:2] == ["queued", "sent"]


async def test_rental_end_check_names_each_failing_condition(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    munich = [(11.45, 48.09), (11.70, 48.09), (11.70, 48.20), (11.45, 48.20)]
    settings = command_gateway_settings(
        mqtt_broker, migrated_database, keys, operating_areas={"munich": munich}
    )
    token = await make_token(migrated_database, "pia", Role.VIEWER)
    closed = {f"door_{d}_open": False for d in ("fl", "fr", "rl", "rr")}
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, dsn=migrated_database) as car,
        api(settings, token) as client,
    ):
        url = f"/v1/vehicles/{car.vin}/rental-end-check"
        await asyncio.to_thread(
            car.telemetry,
            1,
            lat=48.137,
            lon=11.576,
            locked=False,
            ignition=True,
            trunk_open=False,
            **{**closed, "door_fl_open": True},
        )
        deadline = time.monotonic() + 10
        report = (await client.get(url)).json()
        while report["state_time"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            report = (await client.get(url)).json()
        assert report["may_end"] is False
        assert {f["condition"] for f in report["failed"]} == {
            "doors_closed",
            "locked",
            "ignition_off",
        }
        assert report["area"] == "munich"
        await asyncio.to_thread(car.telemetry, 2, locked=True, ignition=False, **closed)
        while not report["may_end"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            report = (await client.get(url)).json()
        assert report["may_end"] is True, report
        assert report["failed"] == []
        unknown = await client.get("/v1/vehicles/WVWZZZ1JZXW999999/rental-end-check")
        assert unknown.status_code == 404
