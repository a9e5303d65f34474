"""The private broker itself: session fixtures, live account changes, restarts, persistence."""

from __future__ import annotations

from gateway.devstack import (
    BrokerAccount,
    CarCredentialsFactory,
    MosquittoBroker,
    MqttTestClient,
    connack_reason,
    random_vin,
)
from schemas.topics import TopicKind, shared_subscription, topic_filter, vehicle_topic


def test_session_broker_carries_a_cars_telemetry_to_the_gateway(
    mqtt_broker: MosquittoBroker,
    gateway_account: BrokerAccount,
    car_credentials: CarCredentialsFactory,
) -> None:
    car = car_credentials()
    topic = vehicle_topic(car.username, TopicKind.TELEMETRY)
    with MqttTestClient(gateway_account) as gateway, MqttTestClient(car) as client:
        assert [c.value for c in gateway.subscribe(shared_subscription(TopicKind.TELEMETRY))] == [1]
        assert client.publish(topic, b"sample").value == 0
        message = gateway.next_message()
    assert (message.topic, message.payload) == (topic, b"sample")
    assert car.port == mqtt_broker.port


def test_accounts_change_without_dropping_connected_clients(
    private_broker: MosquittoBroker,
) -> None:
    broker = private_broker
    vin = random_vin()
    with MqttTestClient(broker.gateway_account) as gateway:
        gateway.subscribe(shared_subscription(TopicKind.TELEMETRY))
        password = broker.add_car(vin)  # returns once the reload took effect
        car = BrokerAccount(vin, password, broker.host, broker.port)
        with MqttTestClient(car) as client:
            assert client.publish(vehicle_topic(vin, TopicKind.TELEMETRY), b"x").value == 0
        assert gateway.next_message().payload == b"x"
        rotated = broker.add_car(vin)
        assert connack_reason(broker.host, broker.port, vin, password) != 0
        assert connack_reason(broker.host, broker.port, vin, rotated) == 0
        broker.remove_account(vin)
        assert connack_reason(broker.host, broker.port, vin, rotated) != 0
        assert not gateway.disconnected


def test_extra_gateway_account_gets_the_gateways_rights(private_broker: MosquittoBroker) -> None:
    broker = private_broker
    second = BrokerAccount(
        "tgw-gateway-2", broker.add_gateway("tgw-gateway-2"), broker.host, broker.port
    )
    car = BrokerAccount(vin := random_vin(), broker.add_car(vin), broker.host, broker.port)
    with MqttTestClient(second) as gateway, MqttTestClient(car) as client:
        gateway.subscribe(shared_subscription(TopicKind.EVENTS))
        client.subscribe(vehicle_topic(vin, TopicKind.COMMANDS))
        assert client.publish(vehicle_topic(vin, TopicKind.EVENTS), b"door").value == 0
        assert gateway.next_message().payload == b"door"
        assert gateway.publish(vehicle_topic(vin, TopicKind.COMMANDS), b"lock").value == 0
        assert client.next_message().payload == b"lock"


def test_restart_keeps_port_accounts_and_queued_messages(private_broker: MosquittoBroker) -> None:
    """A persistent session's backlog survives a broker restart (what ingest relies on)."""
    broker = private_broker
    vin = random_vin()
    car = BrokerAccount(vin, broker.add_car(vin), broker.host, broker.port)
    topic = vehicle_topic(vin, TopicKind.TELEMETRY)

    # The gateway subscribes with a persistent session, then goes away. Mosquitto 2.0 writes
    # only sessions whose last CONNECT had clean start = false to its persistence file, so a
    # session meant to survive a restart must never use clean start (the gateway does not).
    with _persistent(broker.gateway_account) as gateway:
        gateway.subscribe(shared_subscription(TopicKind.TELEMETRY))
    with MqttTestClient(car) as client:
        for i in range(3):
            assert client.publish(topic, f"queued {i}".encode()).value == 0

    port = broker.port
    broker.restart()
    assert broker.port == port

    with _persistent(broker.gateway_account) as resumed:
        payloads = [resumed.next_message().payload for _ in range(3)]
    assert payloads == [b"queued 0", b"queued 1", b"queued 2"]


def _persistent(account: BrokerAccount) -> MqttTestClient:
    return MqttTestClient(account, clean_start=False, session_expiry_s=3600)


def test_kill_then_start_comes_back_on_the_same_port(private_broker: MosquittoBroker) -> None:
    broker = private_broker
    port = broker.port
    broker.kill()
    broker.kill()  # idempotent
    assert not broker.running
    assert connack_reason(broker.host, port, broker.gateway_username, "x") is None
    broker.start()
    assert broker.port == port
    assert connack_reason(broker.host, port, broker.gateway_username, broker.gateway_password) == 0


def test_shared_subscription_queues_an_offline_members_share(
    private_broker: MosquittoBroker,
) -> None:
    """Mosquitto 2.0 keeps dealing messages to an offline persistent member of a share group:
    its share waits in its session until it returns (a stopped gateway instance holds data back
    until it reconnects; one retired for good must end its session)."""
    broker = private_broker
    second = BrokerAccount(
        "tgw-gateway-2", broker.add_gateway("tgw-gateway-2"), broker.host, broker.port
    )
    car = BrokerAccount(vin := random_vin(), broker.add_car(vin), broker.host, broker.port)
    with _persistent(second) as member:
        member.subscribe(shared_subscription(TopicKind.TELEMETRY))
    with _persistent(broker.gateway_account) as online:
        online.subscribe(shared_subscription(TopicKind.TELEMETRY), topic_filter(TopicKind.EVENTS))
        with MqttTestClient(car) as client:
            for i in range(4):
                assert client.publish(vehicle_topic(vin, TopicKind.TELEMETRY), b"%d" % i) == 0
            assert client.publish(vehicle_topic(vin, TopicKind.EVENTS), b"barrier") == 0
        online_share = [m.payload for m in online.messages_until(b"barrier")][:-1]
    with _persistent(second) as member:
        offline_share = [member.next_message().payload for _ in range(4 - len(online_share))]
    assert sorted(online_share + offline_share) == [b"0", b"1", b"2", b"3"]
    assert offline_share  # the offline member really got a share
