"""Ingest against the real broker and database: stored once, rejected with a reason, never lost."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from gateway.devstack import BrokerAccount, MosquittoBroker, PostgresServer
from schemas import TopicKind
from tests.integration.ingest_support import (
    Car,
    fetch,
    gateway_settings,
    now_ms,
    running_gateway,
    telemetry,
    wait_for_value,
)

CarFactory = Callable[..., BrokerAccount]


async def test_happy_path_stores_telemetry_events_status_and_latest_state(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    car = Car(car_credentials())
    vin, ts = car.vin, now_ms()
    async with running_gateway(gateway_settings(mqtt_broker, migrated_database)):
        car.publish(
            TopicKind.STATUS,
            {
                "v": 1,
                "vin": vin,
                "online": True,
                "reason": "connected",
                "ts": ts,
                "boot_id": "boot-1",
                "model": "tgw_generic",
                "firmware": "1.0.0",
                "capabilities": ["lock", "unlock"],
            },
            retain=True,
        )
        car.publish(TopicKind.TELEMETRY, telemetry(vin, 1, ts, lat=48.137, lon=11.575, fuel=62.5))
        car.publish(
            TopicKind.EVENTS,
            {
                "v": 1,
                "vin": vin,
                "boot_id": "boot-1",
                "seq": 2,
                "ts": ts + 5,
                "type": "door_opened",
                "door": "fl",
            },
        )
        await wait_for_value(
            migrated_database, "SELECT count(*) FROM events WHERE vin = %s", (vin,), 1
        )
        await wait_for_value(
            migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (vin,), 1
        )
        await wait_for_value(
            migrated_database, "SELECT online FROM vehicles WHERE vin = %s", (vin,), True
        )
    car.close()
    (latest,) = await fetch(
        migrated_database, "SELECT lat, lon, fuel, seq FROM latest_state WHERE vin = %s", (vin,)
    )
    assert latest == (48.137, 11.575, 62.5, 1)
    (vehicle,) = await fetch(
        migrated_database,
        "SELECT model, firmware, capabilities, last_seen_at IS NOT NULL"
        " FROM vehicles WHERE vin = %s",
        (vin,),
    )
    assert vehicle == ("tgw_generic", "1.0.0", ["lock", "unlock"], True)
    (event,) = await fetch(
        migrated_database, "SELECT type, data FROM events WHERE vin = %s", (vin,)
    )
    assert event == ("door_opened", {"door": "fl"})


async def test_repeated_messages_are_stored_once(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    car = Car(car_credentials())
    ts = now_ms()
    async with running_gateway(gateway_settings(mqtt_broker, migrated_database)):
        for _ in range(3):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 7, ts))
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 8, ts + 1))
        await wait_for_value(
            migrated_database, "SELECT max(seq) FROM telemetry WHERE vin = %s", (car.vin,), 8
        )
    car.close()
    rows = await fetch(
        migrated_database,
        "SELECT seq, count(*) FROM telemetry WHERE vin = %s GROUP BY seq ORDER BY seq",
        (car.vin,),
    )
    assert rows == [(7, 1), (8, 1)]


async def test_late_data_lands_in_history_but_never_overwrites_newer_state(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    car = Car(car_credentials())
    ts = now_ms()
    async with running_gateway(gateway_settings(mqtt_broker, migrated_database)):
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 10, ts, speed=80.0, fuel=50.0))
        await wait_for_value(
            migrated_database, "SELECT count(*) FROM latest_state WHERE vin = %s", (car.vin,), 1
        )
        # A backlog flushed after reconnecting: older samples, one signal the newest lacks.
        backlog = telemetry(car.vin, 3, ts - 60_000, speed=20.0, fuel=70.0, batt_v=12.4)
        car.publish(TopicKind.TELEMETRY, backlog)
        await wait_for_value(
            migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (car.vin,), 2
        )
    car.close()
    (latest,) = await fetch(
        migrated_database, "SELECT seq, speed, fuel FROM latest_state WHERE vin = %s", (car.vin,)
    )
    assert latest == (10, 80.0, 50.0)


async def test_every_rejection_is_kept_as_a_dead_letter_with_its_reason(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarFactory,
) -> None:
    car = Car(car_credentials())
    other_vin = Car(car_credentials()).vin
    vin, ts = car.vin, now_ms()
    topic = f"tgw/v1/vehicles/{vin}/telemetry"
    # A broker account whose name is no VIN: the ACL lets it publish on "its" topic.
    not_a_vin = "WBA-NOT-A-VIN"
    bad_topic_car = Car(
        BrokerAccount(
            not_a_vin, mqtt_broker.add_account(not_a_vin), mqtt_broker.host, mqtt_broker.port
        )
    )
    settings = gateway_settings(mqtt_broker, migrated_database, max_payload_bytes=2048)
    # Retained messages of other tests' cars may arrive too: count this test's only.
    ours = "SELECT count(*) FROM dead_letters WHERE vin = %s OR topic LIKE %s"
    async with running_gateway(settings):
        car.publish_raw(topic, b"{not json")
        car.publish_raw(topic, json.dumps({"v": 2, "vin": vin}).encode())
        car.publish_raw(topic, json.dumps(telemetry(vin, 1, ts, speed=999.0)).encode())
        car.publish_raw(topic, json.dumps(telemetry(other_vin, 1, ts)).encode())
        car.publish_raw(topic, json.dumps(telemetry(vin, 2, ts + 3_600_000)).encode())
        car.publish_raw(topic, json.dumps(telemetry(vin, 3, ts, note="x" * 4000)).encode())
        bad_topic_car.publish_raw(f"tgw/v1/vehicles/{not_a_vin}/telemetry", b"{}")
        await wait_for_value(migrated_database, ours, (vin, f"%{not_a_vin}%"), 7)
    car.close()
    bad_topic_car.close()
    rows = await fetch(
        migrated_database, ours.replace("count(*)", "reason, detail"), (vin, f"%{not_a_vin}%")
    )
    reasons = dict(rows)
    assert set(reasons) == {
        "not_json",
        "unknown_version",
        "schema_violation",
        "vin_mismatch",
        "clock_skew",
        "oversized",
        "unknown_topic",
    }
    assert "samples.0.signals.speed" in reasons["schema_violation"]
    assert other_vin in reasons["vin_mismatch"]
    assert "ahead" in reasons["clock_skew"]
    assert await fetch(migrated_database, "SELECT count(*) FROM telemetry") == [(0,)]


async def test_unregistered_car_is_refused_when_registration_is_required(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    known, unknown = Car(car_credentials()), Car(car_credentials())
    await fetch(
        migrated_database, "INSERT INTO vehicles (vin) VALUES (%s) RETURNING vin", (known.vin,)
    )
    settings = gateway_settings(mqtt_broker, migrated_database, require_registration=True)
    ts = now_ms()
    async with running_gateway(settings):
        known.publish(TopicKind.TELEMETRY, telemetry(known.vin, 1, ts))
        unknown.publish(TopicKind.TELEMETRY, telemetry(unknown.vin, 1, ts))
        # Retained birth messages of other tests' cars may arrive too: look at ours only.
        ours = "SELECT count(*) FROM {} WHERE vin IN (%s, %s)"
        vins = (known.vin, unknown.vin)
        await wait_for_value(migrated_database, ours.format("dead_letters"), vins, 1)
        await wait_for_value(migrated_database, ours.format("telemetry"), vins, 1)
    known.close()
    unknown.close()
    letters = await fetch(
        migrated_database, "SELECT vin, reason FROM dead_letters WHERE vin IN (%s, %s)", vins
    )
    assert letters == [(unknown.vin, "unknown_vehicle")]


async def test_last_will_sets_offline_and_silence_marks_stale(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    account = car_credentials()
    connected_at = now_ms()  # birth and will of one connection carry its start (protocol 5)
    will = {
        "v": 1,
        "vin": account.username,
        "online": False,
        "reason": "connection_lost",
        "ts": connected_at,
    }
    car = Car(account, will=will)
    birth = {
        "v": 1,
        "vin": car.vin,
        "online": True,
        "reason": "connected",
        "ts": connected_at,
        "boot_id": "b1",
        "capabilities": [],
    }
    settings = gateway_settings(mqtt_broker, migrated_database, stale_after_s=1)
    async with running_gateway(settings):
        car.publish(TopicKind.STATUS, birth, retain=True)
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 1, now_ms()))
        await wait_for_value(
            migrated_database, "SELECT online FROM vehicles WHERE vin = %s", (car.vin,), True
        )
        await wait_for_value(
            migrated_database, "SELECT stale FROM vehicles WHERE vin = %s", (car.vin,), True
        )
        car.drop_connection()
        await wait_for_value(
            migrated_database, "SELECT online FROM vehicles WHERE vin = %s", (car.vin,), False
        )


@pytest.mark.usefixtures("migrated_templates")
async def test_database_outage_mid_stream_loses_nothing(
    mqtt_broker: MosquittoBroker,
    postgres_server: PostgresServer,
    migrated_database: str,
    car_credentials: CarFactory,
) -> None:
    car = Car(car_credentials())
    ts = now_ms()
    settings = gateway_settings(
        mqtt_broker, migrated_database, retry_initial_s=0.1, retry_max_s=0.5
    )
    async with running_gateway(settings):
        for seq in range(50):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
        await wait_for_value(migrated_database, "SELECT count(*) FROM telemetry", (), 50)
        postgres_server.stop()
        try:
            for seq in range(50, 150):
                car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
        finally:
            postgres_server.start()
        await wait_for_value(migrated_database, "SELECT count(*) FROM telemetry", (), 150)
    car.close()
    rows = await fetch(
        migrated_database, "SELECT count(DISTINCT seq), min(seq), max(seq) FROM telemetry"
    )
    assert rows == [(150, 0, 149)]


async def test_late_will_of_an_old_connection_does_not_undo_a_newer_birth(
    mqtt_broker: MosquittoBroker, migrated_database: str, car_credentials: CarFactory
) -> None:
    car = Car(car_credentials())
    first_connection, second_connection = now_ms() - 60_000, now_ms()
    birth = {
        "v": 1, "vin": car.vin, "online": True, "reason": "connected", "ts": second_connection,
        "boot_id": "b2", "capabilities": [],
    }  # fmt: skip
    old_will = {
        "v": 1, "vin": car.vin, "online": False, "reason": "connection_lost",
        "ts": first_connection,
    }  # fmt: skip
    settings = gateway_settings(mqtt_broker, migrated_database)
    online = "SELECT online FROM vehicles WHERE vin = %s"
    async with running_gateway(settings):
        car.publish(TopicKind.STATUS, birth)
        await wait_for_value(migrated_database, online, (car.vin,), True)
        car.publish(TopicKind.STATUS, old_will)
        # A message after the will proves the gateway has processed the will too.
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 1, now_ms()))
        await wait_for_value(
            migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (car.vin,), 1
        )
        assert await fetch(migrated_database, online, (car.vin,)) == [(True,)]
        car.publish(TopicKind.STATUS, {**old_will, "ts": second_connection})
        await wait_for_value(migrated_database, online, (car.vin,), False)
    car.close()
