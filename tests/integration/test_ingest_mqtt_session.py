"""The gateway's own MQTT 5 session on a real broker: persistent session, acknowledgement after
commit, reconnection, refusal, routes and publish."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from gateway.config import MqttSettings
from gateway.devstack import BrokerAccount, MosquittoBroker, free_port
from gateway.errors import BrokerError
from gateway.ingest.inbound import InboundMessage
from gateway.ingest.mqtt_source import MqttIngestSource
from schemas import TopicKind, vehicle_topic
from tests.integration.ingest_support import Car, now_ms, telemetry

CarFactory = Callable[..., BrokerAccount]
KINDS = (TopicKind.TELEMETRY,)


def settings_for(broker: MosquittoBroker, *, password: str | None = None) -> MqttSettings:
    username = f"tgw-gw-{uuid.uuid4().hex[:8]}"
    real = broker.add_gateway(username)
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        username=username,
        password=SecretStr(password or real),
        client_id=username,
        share_group=f"group-{username}",
        keepalive_s=5,
    )


def car_on(broker: MosquittoBroker) -> Car:
    vin = f"WBA{uuid.uuid4().hex[:14].upper()}".replace("O", "0").replace("I", "1")
    return Car(BrokerAccount(vin, broker.add_car(vin), broker.host, broker.port))


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll `predicate` on the event loop (the source changes state there) with a deadline."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def receive_exactly(source: MqttIngestSource, count: int) -> list[InboundMessage]:
    received: list[InboundMessage] = []
    async with asyncio.timeout(30):
        while len(received) < count:
            received += await source.receive(count - len(received), 0.05)
    return received


async def test_unacknowledged_messages_come_back_after_a_reconnect_acknowledged_ones_do_not(
    private_broker: MosquittoBroker,
) -> None:
    settings = settings_for(private_broker)
    car = car_on(private_broker)
    ts = now_ms()
    async with MqttIngestSource(settings, KINDS) as source:
        for seq in range(4):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
        first = await receive_exactly(source, 4)
        assert [json.loads(m.payload)["samples"][0]["seq"] for m in first] == [0, 1, 2, 3]
        assert source.ack(first[:2]) == 2  # committed; the other two were not
    # The session persists at the broker: the same identity gets the other two again.
    async with MqttIngestSource(settings, KINDS) as source:
        again = await receive_exactly(source, 2)
        assert sorted(json.loads(m.payload)["samples"][0]["seq"] for m in again) == [2, 3]
        assert source.ack(again) == 2
    car.close()


async def test_a_broker_restart_reconnects_and_old_packet_ids_are_not_acknowledged(
    private_broker: MosquittoBroker,
) -> None:
    settings = settings_for(private_broker)
    car = car_on(private_broker)
    ts = now_ms()
    async with MqttIngestSource(settings, KINDS) as source:
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 1, ts))
        (before,) = await receive_exactly(source, 1)
        private_broker.restart()
        await until(lambda: not source.connected)  # the loss, then the new connection
        await until(lambda: source.connected)
        # Its packet id belonged to the old connection: the broker redelivers it instead.
        assert source.ack([before]) == 0
        car.close()
        car = car_on(private_broker)
        car.publish(TopicKind.TELEMETRY, telemetry(car.vin, 2, ts + 1))
        after = await receive_exactly(source, 2)
        seqs = sorted(json.loads(m.payload)["samples"][0]["seq"] for m in after)
        assert seqs == [1, 2]
        assert all(m.generation > before.generation for m in after)
        assert source.ack(after) == 2
    car.close()


async def test_wrong_password_is_refused_at_start_with_a_clear_error(
    private_broker: MosquittoBroker,
) -> None:
    settings = settings_for(private_broker, password="not-the-password-at-all")
    with pytest.raises(BrokerError, match="refused the gateway"):
        async with MqttIngestSource(settings, KINDS):
            pass


async def test_no_broker_is_reported_after_the_connect_timeout() -> None:
    settings = MqttSettings(port=free_port(), password=SecretStr("x" * 24))
    with pytest.raises(BrokerError, match="no answer from the MQTT broker"):
        async with MqttIngestSource(settings, KINDS, connect_timeout_s=1.5):
            pass


async def test_routed_kinds_go_to_their_handler_and_publish_returns_the_puback_reason(
    private_broker: MosquittoBroker,
) -> None:
    settings = settings_for(private_broker)
    car = car_on(private_broker)
    routed: list[InboundMessage] = []
    routes = {TopicKind.COMMAND_RESULTS: routed.append}
    async with MqttIngestSource(settings, KINDS, routes=routes) as source:
        car.publish_raw(vehicle_topic(car.vin, TopicKind.COMMAND_RESULTS), b"{}")
        await until(lambda: bool(routed))
        assert routed[0].topic.endswith("/command_results")
        assert source.pending == 0
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        # Nobody subscribes to this car's commands: 0x10, no matching subscribers.
        reason = await source.publish(
            vehicle_topic(car.vin, TopicKind.COMMANDS), b"lock", properties, timeout_s=10
        )
        assert reason.value == 0x10
        assert source.ack(routed) == 1
    car.close()
