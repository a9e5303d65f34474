"""The broker's security, against a real Mosquitto rendered from the repository's config.

Negative checks never sleep: after the message under test, a "barrier" message is sent on a
path that must work; the broker keeps order, so anything that leaked arrives before it. Each
negative check also has a positive control proving the message really was published.

What Mosquitto 2.0 does with our configuration, verified here:
- a PUBLISH the ACL forbids gets PUBACK 0x87 (not authorized) and goes nowhere;
- a car's SUBSCRIBE outside commands topics is refused (0x87) by the dynamic-security plugin
  (acl_file alone grants every SUBSCRIBE); each message is still checked for `read` before
  delivery, so a car subscribed to another car's commands topic receives nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gateway.devstack import (
    BrokerAccount,
    MosquittoBroker,
    MqttTestClient,
    connack_reason,
    random_vin,
)
from schemas.topics import GATEWAY_SHARE_GROUP, TopicKind, shared_subscription, vehicle_topic

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
GRANTED_QOS_1 = 0x01


@pytest.fixture
def broker(private_broker: MosquittoBroker) -> MosquittoBroker:
    # A broker of its own: no other test's persistent sessions share its $share groups.
    return private_broker


def _car(broker: MosquittoBroker) -> BrokerAccount:
    vin = random_vin()
    return BrokerAccount(vin, broker.add_car(vin), broker.host, broker.port)


@pytest.fixture
def gateway(broker: MosquittoBroker) -> Iterator[MqttTestClient]:
    with MqttTestClient(broker.gateway_account) as client:
        codes = client.subscribe(
            *(shared_subscription(kind) for kind in TopicKind if kind is not TopicKind.COMMANDS)
        )
        assert [c.value for c in codes] == [GRANTED_QOS_1] * 4
        yield client


def _values(codes: list[ReasonCode]) -> list[int]:
    return [code.value for code in codes]


def test_car_telemetry_reaches_gateway_shared_subscription(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    account = _car(broker)
    topic = vehicle_topic(account.username, TopicKind.TELEMETRY)
    with MqttTestClient(account) as car:
        assert car.publish(topic, b'{"hello": 1}').value == 0
    message = gateway.next_message()
    assert (message.topic, message.payload, message.qos) == (topic, b'{"hello": 1}', 1)


@pytest.mark.parametrize("kind", [k for k in TopicKind if k is not TopicKind.COMMANDS])
def test_car_may_publish_every_uplink_kind_of_its_own(
    broker: MosquittoBroker, gateway: MqttTestClient, kind: TopicKind
) -> None:
    account = _car(broker)
    with MqttTestClient(account) as car:
        assert car.publish(vehicle_topic(account.username, kind), b"own").value == 0
    assert gateway.next_message().payload == b"own"


@pytest.mark.parametrize("kind", list(TopicKind))
def test_car_cannot_publish_on_another_cars_topics(
    broker: MosquittoBroker, gateway: MqttTestClient, kind: TopicKind
) -> None:
    car_a, car_b = _car(broker), _car(broker)
    with MqttTestClient(car_b) as b, MqttTestClient(car_a) as a:
        assert _values(b.subscribe(vehicle_topic(car_b.username, TopicKind.COMMANDS))) == [1]
        spoofed = a.publish(vehicle_topic(car_b.username, kind), b"spoofed")
        assert spoofed.value == NOT_AUTHORIZED, spoofed
        # Barriers: A's own telemetry to the gateway, a command from the gateway to B.
        assert a.publish(vehicle_topic(car_a.username, TopicKind.TELEMETRY), b"barrier").value == 0
        assert [m.payload for m in gateway.messages_until(b"barrier")] == [b"barrier"]
        assert gateway.publish(vehicle_topic(car_b.username, TopicKind.COMMANDS), b"cmd").value == 0
        assert [m.payload for m in b.messages_until(b"cmd")] == [b"cmd"]


def test_car_cannot_publish_commands_even_to_itself(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    account = _car(broker)
    with MqttTestClient(account) as car:
        car.subscribe(vehicle_topic(account.username, TopicKind.COMMANDS))
        forged = car.publish(vehicle_topic(account.username, TopicKind.COMMANDS), b"forged")
        assert forged.value == NOT_AUTHORIZED
        assert (
            gateway.publish(vehicle_topic(account.username, TopicKind.COMMANDS), b"real").value == 0
        )
        assert [m.payload for m in car.messages_until(b"real")] == [b"real"]


def test_car_cannot_read_another_cars_commands(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    car_a, car_b = _car(broker), _car(broker)
    b_commands = vehicle_topic(car_b.username, TopicKind.COMMANDS)
    with MqttTestClient(car_b) as b, MqttTestClient(car_a) as a:
        b.subscribe(b_commands)
        codes = a.subscribe(
            b_commands,
            "tgw/v1/vehicles/+/commands",
            "tgw/v1/vehicles/#",
            "#",
            f"$share/{GATEWAY_SHARE_GROUP}/tgw/v1/vehicles/+/commands",
        )
        # Mosquitto 2.0's acl_file grants every SUBSCRIBE (0x01) and filters on delivery;
        # a broker with subscribe ACLs answers 0x87. Either way nothing may arrive below.
        assert set(_values(codes)) <= {GRANTED_QOS_1, NOT_AUTHORIZED}
        assert gateway.publish(b_commands, b"unlock B").value == 0
        assert [m.payload for m in b.messages_until(b"unlock B")] == [b"unlock B"]  # control
        assert gateway.publish(vehicle_topic(car_a.username, TopicKind.COMMANDS), b"A").value == 0
        # A sees only its own command (once per matching subscription), never B's.
        assert {m.payload for m in a.messages_until(b"A")} == {b"A"}


def test_car_cannot_read_other_cars_uplink(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    car_a, car_b = _car(broker), _car(broker)
    with MqttTestClient(car_b) as b, MqttTestClient(car_a) as a:
        codes = a.subscribe("tgw/v1/vehicles/+/telemetry", "tgw/v1/vehicles/+/+", "#")
        assert _values(codes) == [NOT_AUTHORIZED] * 3  # the dynamic-security plugin refuses
        a.subscribe(vehicle_topic(car_a.username, TopicKind.COMMANDS))  # for the barrier
        telemetry_b = vehicle_topic(car_b.username, TopicKind.TELEMETRY)
        assert b.publish(telemetry_b, b"B's position").value == 0
        assert gateway.next_message().payload == b"B's position"  # control
        assert gateway.publish(vehicle_topic(car_a.username, TopicKind.COMMANDS), b"A").value == 0
        assert {m.payload for m in a.messages_until(b"A")} == {b"A"}


def test_anonymous_connection_is_refused(broker: MosquittoBroker) -> None:
    reason = connack_reason(broker.host, broker.port, None, None)
    assert reason is not None
    assert reason.value in {NOT_AUTHORIZED, BAD_CREDENTIALS}


def test_wrong_password_is_refused(broker: MosquittoBroker) -> None:
    account = _car(broker)
    for username in (account.username, broker.gateway_username, "nobody-at-all"):
        reason = connack_reason(broker.host, broker.port, username, "wrong password")
        assert reason is not None
        assert reason.value in {NOT_AUTHORIZED, BAD_CREDENTIALS}, username
    assert connack_reason(broker.host, broker.port, account.username, account.password) == 0


def test_car_cannot_take_over_the_gateways_session(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    """Client id = username: a car claiming the gateway's client id stays itself."""
    account = _car(broker)
    with MqttTestClient(account, client_id=broker.gateway_username) as car:
        telemetry = vehicle_topic(account.username, TopicKind.TELEMETRY)
        assert car.publish(telemetry, b"still me").value == 0
        assert gateway.next_message().payload == b"still me"
    assert not gateway.disconnected


def test_car_cannot_steal_from_the_gateways_share_group(
    broker: MosquittoBroker, gateway: MqttTestClient
) -> None:
    """The dynamic-security plugin refuses the SUBSCRIBE (acl_file alone would grant it, and
    the gateway would silently lose the thief's round-robin turns of the victim's data)."""
    thief, victim = _car(broker), _car(broker)
    with MqttTestClient(thief) as a, MqttTestClient(victim) as b:
        assert _values(a.subscribe(shared_subscription(TopicKind.TELEMETRY))) == [NOT_AUTHORIZED]
        telemetry = vehicle_topic(victim.username, TopicKind.TELEMETRY)
        sent = [f"m{i}".encode() for i in range(6)]
        for payload in sent:
            assert b.publish(telemetry, payload).value == 0
        assert b.publish(vehicle_topic(victim.username, TopicKind.EVENTS), b"barrier").value == 0
        received = [m.payload for m in gateway.messages_until(b"barrier")]
    assert received[:-1] == sent
