"""MQTT 5 framing of the gateway's broker session, checked against paho-mqtt's own codec."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet  # paho's decoder: an independent reference
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest.mqtt_wire import (
    MqttProtocolError,
    PacketReader,
    decode_connack,
    decode_disconnect,
    decode_puback,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    reason_name,
)

TOPIC = "tgw/v1/vehicles/WBAUE11040E123456/telemetry"


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    packet_id: int = 7,
    retain: bool = False,
    properties: bytes = b"\x00",
) -> bytes:
    """A PUBLISH as a broker sends it (built by hand, independently of the code under test)."""
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += properties + payload
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes((0x30 | (qos << 1) | int(retain),)) + bytes(encoded) + body


def test_publish_is_decoded_with_topic_packet_id_qos_retain_and_payload() -> None:
    ((first, body),) = PacketReader().feed(publish_packet(TOPIC, b'{"v":1}', retain=True))
    assert decode_publish(first, body) == (TOPIC, 7, 1, True, b'{"v":1}')


def test_publish_properties_are_skipped() -> None:
    # Message expiry (0x02, 4 bytes) and a user property: the payload starts after them.
    properties = b"\x02\x00\x00\x00\x3c" + b"\x26\x00\x01k\x00\x01v"
    packet = publish_packet(TOPIC, b"data", properties=bytes((len(properties),)) + properties)
    ((first, body),) = PacketReader().feed(packet)
    assert decode_publish(first, body)[4] == b"data"


def test_qos0_publish_has_no_packet_id() -> None:
    ((first, body),) = PacketReader().feed(publish_packet(TOPIC, b"x", qos=0))
    assert decode_publish(first, body) == (TOPIC, 0, 0, False, b"x")


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_packets_split_anywhere_across_reads_come_out_whole_and_in_order(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(
        publish_packet(TOPIC, payload, packet_id=i + 1) for i, payload in enumerate(payloads)
    )
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reader = PacketReader()
    packets = []
    for start, stop in itertools.pairwise(points):
        packets += reader.feed(stream[start:stop])
    decoded = [decode_publish(first, body) for first, body in packets]
    assert [d[4] for d in decoded] == payloads
    assert [d[1] for d in decoded] == list(range(1, len(payloads) + 1))


def test_large_publish_uses_a_multi_byte_length() -> None:
    payload = b"x" * 70_000
    ((first, body),) = PacketReader().feed(publish_packet(TOPIC, payload))
    assert decode_publish(first, body)[4] == payload


def test_publish_without_topic_is_a_protocol_error() -> None:
    with pytest.raises(MqttProtocolError, match="topic"):
        decode_publish(0x32, b"\x00\x00\x00\x01\x00data")


def test_truncated_publish_is_a_protocol_error() -> None:
    with pytest.raises(MqttProtocolError):
        decode_publish(0x32, b"\x00\x05tgw")


def test_a_five_byte_remaining_length_is_a_protocol_error() -> None:
    with pytest.raises(MqttProtocolError, match="remaining length"):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x7f")


def test_connect_matches_what_paho_would_send() -> None:
    packet = encode_connect(
        client_id="tgw-gateway-1",
        username="tgw-gateway-1",
        password="s3cret",
        keepalive_s=30,
        clean_start=False,
        session_expiry_s=604_800,
        receive_maximum=20_000,
    )
    ((first, body),) = PacketReader().feed(packet)
    assert first == 0x10
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # user name, password, clean start off
    assert int.from_bytes(body[8:10], "big") == 30
    properties: Any = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    _, used = properties.unpack(body[10:])
    assert properties.SessionExpiryInterval == 604_800
    assert properties.ReceiveMaximum == 20_000
    rest = body[10 + used :]
    assert rest == b"\x00\x0dtgw-gateway-1\x00\x0dtgw-gateway-1\x00\x06s3cret"


def test_subscribe_asks_qos1_for_each_filter() -> None:
    filters = ["$share/g/tgw/v1/vehicles/+/telemetry", "$share/g/tgw/v1/vehicles/+/status"]
    ((first, body),) = PacketReader().feed(encode_subscribe(9, filters))
    assert first == 0x82
    assert body[:3] == b"\x00\x09\x00"
    expected = b"".join(len(f).to_bytes(2, "big") + f.encode() + b"\x01" for f in filters)
    assert body[3:] == expected


def test_publish_we_send_decodes_with_paho() -> None:
    properties: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = 30
    packet = encode_publish(TOPIC, 42, b"lock", properties.pack())
    ((first, body),) = PacketReader().feed(packet)
    decoded = paho_packet.decode_publish(first, body, MQTTProtocolVersion.MQTTv5)
    assert (decoded.topic, decoded.mid, decoded.qos, decoded.payload) == (
        TOPIC.encode(),
        42,
        1,
        b"lock",
    )
    received: Any = decoded.properties
    assert received.MessageExpiryInterval == 30


def test_puback_is_the_short_success_form() -> None:
    assert encode_puback(0x1234) == b"\x40\x02\x12\x34"
    assert decode_puback(b"\x12\x34") == (0x1234, 0)
    assert decode_puback(b"\x12\x34\x10\x00") == (0x1234, 0x10)  # no matching subscribers


def test_connack_suback_and_disconnect() -> None:
    connack = decode_connack(b"\x01\x00\x03\x13\x00\x3c")  # session present, Server Keep Alive
    assert (connack.session_present, connack.reason_code) == (True, 0)
    connack_properties: Any = connack.properties
    assert connack_properties.ServerKeepAlive == 60
    assert decode_connack(b"\x00\x87\x00").reason_code == 0x87
    assert decode_suback(b"\x00\x09\x00\x01\x87") == (9, [0x01, 0x87])
    assert decode_disconnect(b"") == 0
    assert decode_disconnect(b"\x8e\x00") == 0x8E


def test_reason_names_are_readable() -> None:
    assert reason_name(PacketTypes.CONNACK, 0x87) == "Not authorized (135)"
    assert reason_name(PacketTypes.CONNACK, 0x4D) == "unknown (77)"
