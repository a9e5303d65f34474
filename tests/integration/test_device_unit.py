"""The in-car unit against a real Mosquitto: birth, will, telemetry, events, store and forward."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from device_sim.mqtt import MqttLink
from device_sim.settings import UnitSettings
from gateway.devstack import MosquittoBroker, random_vin
from schemas import (
    BacklogOverflowEvent,
    DoorEvent,
    IgnitionEvent,
    StatusMessage,
    StatusReason,
    TelemetryMessage,
)
from tests.integration.device_support import GatewayProbe, running_car, wait_until

pytestmark = pytest.mark.integration


async def test_a_car_announces_itself_and_reports(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    async with GatewayProbe(mqtt_broker) as gateway:
        async with running_car(
            mqtt_broker, tmp_path / "q.sqlite", vin=vin, password=password, profile="vw_mqb"
        ) as car:
            await wait_until(lambda: len(gateway.samples(vin)) >= 2, what="two samples")
            car.state.door_fl_open = True
            car.ecus.send_changed()
            await wait_until(lambda: gateway.of(vin, DoorEvent), what="door event")
            car.state.ignition = True
            car.ecus.send_changed()
            await wait_until(lambda: gateway.of(vin, IgnitionEvent), what="ignition event")
            await wait_until(
                lambda: any(
                    s.signals.door_fl_open and s.signals.ignition
                    for m in gateway.of(vin, TelemetryMessage)
                    for s in m.samples
                ),
                what="a sample with the door open and the ignition on",
            )
        await wait_until(lambda: len(gateway.statuses(vin)) >= 2, what="offline status")

    assert gateway.rejected == []  # every message the car sent passes the gateway's validation
    birth, goodbye = gateway.statuses(vin)[0], gateway.statuses(vin)[-1]
    assert birth.online
    assert birth.reason is StatusReason.CONNECTED
    assert birth.model == "vw_mqb"
    assert birth.capabilities is not None
    assert "lock" in birth.capabilities
    assert (goodbye.online, goodbye.reason) == (False, StatusReason.DISCONNECTED)
    (door,) = gateway.of(vin, DoorEvent)
    assert (door.type, door.door.value) == ("door_opened", "fl")
    # One per-boot counter for samples and events: every number once, from 0 on.
    seqs = sorted([s for _, s in gateway.samples(vin)] + [e.seq for e in gateway.events(vin)])
    assert seqs == list(range(len(seqs)))
    assert {boot for boot, _ in gateway.samples(vin)} == {birth.boot_id}
    first = gateway.of(vin, TelemetryMessage)[0].samples[0].signals
    assert first.lat is not None
    assert first.locked is True
    assert first.fuel == 80.0


async def test_losing_the_connection_publishes_the_last_will(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    async with (
        GatewayProbe(mqtt_broker) as gateway,
        running_car(mqtt_broker, tmp_path / "q.sqlite", vin=vin, password=password) as car,
    ):
        boot_id = car.unit.boot_id
        car.unit.drop_connection(offline_s=1.0)
        await wait_until(
            lambda: any(s.reason is StatusReason.CONNECTION_LOST for s in gateway.statuses(vin)),
            what="last will",
        )
        await wait_until(lambda: car.unit.counters.sessions == 2, what="reconnect")
    will = next(s for s in gateway.statuses(vin) if s.reason is StatusReason.CONNECTION_LOST)
    assert (will.online, will.boot_id) == (False, boot_id)
    assert gateway.rejected == []


def _settings(**overrides: object) -> UnitSettings:
    values: dict[str, object] = {
        "parked_interval_s": 0.1,
        "driving_interval_s": 0.1,
        "min_interval_s": 0.05,
        "backlog_msgs_per_s": 200.0,
    }
    values.update(overrides)
    return UnitSettings.model_validate(values)


async def test_store_and_forward_across_a_broker_restart(
    private_broker: MosquittoBroker, tmp_path: Path
) -> None:
    broker = private_broker
    vin = random_vin()
    password = broker.add_car(vin)
    async with (
        GatewayProbe(broker) as gateway,
        running_car(
            broker, tmp_path / "q.sqlite", vin=vin, password=password, settings=_settings()
        ) as car,
    ):
        await wait_until(lambda: len(gateway.samples(vin)) >= 3, what="samples before")
        broker.stop()
        await wait_until(lambda: car.unit.queued >= 40, what="a backlog while the broker is down")
        produced_offline = car.unit.queued
        broker.start()
        await wait_until(lambda: car.unit.counters.sessions >= 2, what="reconnect")
        await wait_until(lambda: car.unit.counters.backlog_messages >= 1, what="backlog drained")
        last = car.unit.counters.samples - 1
        await wait_until(
            lambda: {s for _, s in gateway.samples(vin)} >= set(range(last)),
            what="every sample up to the last",
        )

    samples = gateway.samples(vin)
    seqs = {seq for _, seq in samples}
    assert seqs >= set(range(last)), f"lost: {sorted(set(range(last)) - seqs)}"
    # The backlog went out oldest first, in batches, not one message per sample.
    batches = [m for m in gateway.of(vin, TelemetryMessage) if len(m.samples) > 1]
    assert batches, f"{produced_offline} queued samples came back one by one"
    for batch in batches:
        numbers = [s.seq for s in batch.samples]
        assert numbers == sorted(numbers)
    assert gateway.rejected == []


async def test_messages_nobody_subscribed_to_stay_queued_until_the_gateway_is_back(
    private_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # A restarted Mosquitto 2.0 forgets the gateway's $share subscription until the gateway
    # reconnects; meanwhile it answers PUBACK 0x10 and keeps nothing. The car must keep the rows.
    broker = private_broker
    vin = random_vin()
    password = broker.add_car(vin)
    async with running_car(
        broker, tmp_path / "q.sqlite", vin=vin, password=password, settings=_settings()
    ) as car:
        await wait_until(
            lambda: car.unit.counters.no_subscriber_retries >= 3, what="PUBACKs with no subscriber"
        )
        produced_unheard = car.unit.counters.samples
        assert car.unit.counters.rows_acknowledged == 0
        async with GatewayProbe(broker) as gateway:
            await wait_until(
                lambda: {s for _, s in gateway.samples(vin)} >= set(range(produced_unheard)),
                what="every sample produced while nobody listened",
            )
        assert gateway.rejected == []


async def test_a_row_refused_while_the_session_opens_is_sent_again_in_that_session(
    private_broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows go out live as soon as a session opens, two round trips (birth, subscription) before
    # the session is counted. A row the broker refused in between (no subscriber yet: 0x10)
    # was left for "the next session" to drain, and in a session that stays up it never went.
    subscribe = MqttLink.subscribe

    async def slow_subscribe(link: MqttLink, topic: str, qos: int = 1) -> None:
        await asyncio.sleep(0.5)  # samples go out live meanwhile
        await subscribe(link, topic, qos)

    monkeypatch.setattr(MqttLink, "subscribe", slow_subscribe)
    broker = private_broker
    vin = random_vin()
    password = broker.add_car(vin)
    async with running_car(
        broker, tmp_path / "q.sqlite", vin=vin, password=password, settings=_settings()
    ) as car:
        await wait_until(lambda: car.unit.counters.sessions == 1, what="the session counted")
        await wait_until(lambda: car.unit.counters.no_subscriber_retries >= 1, what="a PUBACK 0x10")
        produced = car.unit.counters.samples
        async with GatewayProbe(broker) as gateway:
            await wait_until(
                lambda: {s for _, s in gateway.samples(vin)} >= set(range(produced)),
                what="every sample, those sent while the session opened included",
            )
        assert car.unit.counters.sessions == 1  # no reconnect did it


async def test_the_queue_survives_the_units_own_restart(
    private_broker: MosquittoBroker, tmp_path: Path
) -> None:
    broker = private_broker
    vin = random_vin()
    password = broker.add_car(vin)
    queue_file = tmp_path / "q.sqlite"
    async with GatewayProbe(broker) as gateway:
        broker.stop()
        # First boot: never reaches the broker; its samples wait on disk.
        async with running_car(
            broker, queue_file, vin=vin, password=password, settings=_settings(), connect=False
        ) as car:
            await wait_until(lambda: car.unit.queued >= 20, what="samples queued offline")
            first_boot = car.unit.boot_id
            first_samples = car.unit.counters.samples
        broker.start()
        # Second boot: a new boot id; the old boot's rows go out under their own boot id.
        async with running_car(
            broker, queue_file, vin=vin, password=password, settings=_settings()
        ) as car:
            second_boot = car.unit.boot_id
            await wait_until(
                lambda: (
                    {s for b, s in gateway.samples(vin) if b == first_boot}
                    >= set(range(first_samples))
                ),
                what="the first boot's samples",
            )
            await wait_until(
                lambda: any(b == second_boot for b, _ in gateway.samples(vin)),
                what="live samples of the second boot",
            )
    assert first_boot != second_boot
    assert gateway.rejected == []


async def test_overflow_is_counted_and_reported(
    private_broker: MosquittoBroker, tmp_path: Path
) -> None:
    broker = private_broker
    vin = random_vin()
    password = broker.add_car(vin)
    async with (
        GatewayProbe(broker) as gateway,
        running_car(
            broker,
            tmp_path / "q.sqlite",
            vin=vin,
            password=password,
            settings=_settings(queue_max_records=20),
        ) as car,
    ):
        broker.stop()
        await wait_until(lambda: car.unit.overflow_dropped >= 10, what="overflow")
        broker.start()
        await wait_until(lambda: gateway.of(vin, BacklogOverflowEvent), what="overflow event")
        dropped = car.unit.overflow_dropped
    (event,) = gateway.of(vin, BacklogOverflowEvent)
    assert 10 <= event.dropped <= dropped
    assert event.oldest_dropped_ts is not None
    assert all(isinstance(s, StatusMessage) for s in gateway.statuses(vin))
    assert gateway.rejected == []
