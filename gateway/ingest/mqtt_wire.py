"""MQTT 5 framing for the gateway's broker session (pure: bytes in, bytes out, no I/O).

The session needs only a few packets: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH QoS 0/1
both ways, PUBACK both ways, PINGREQ/PINGRESP and DISCONNECT. Receiving PUBLISH and sending
PUBACK are on the hot path (every car message), so they are hand-written here: paho-mqtt's
general-purpose client spends about 85 µs of CPU per received MQTT 5 message on this
machine, this about 2 µs (docs/benchmarks.md). Properties of control packets are encoded
and decoded with paho's `Properties` class, which is not on the hot path.

What the session never announces, the broker never sends: no Topic Alias Maximum (so no
topic aliases), no Maximum QoS 2 subscription (so no QoS 2), no enhanced authentication.
Such packets, and malformed ones, raise `MqttProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import BrokerError

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "DISCONNECT_NORMAL",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "Connack",
    "MqttProtocolError",
    "PacketReader",
    "decode_connack",
    "decode_disconnect",
    "decode_puback",
    "decode_publish",
    "decode_suback",
    "encode_connect",
    "encode_puback",
    "encode_publish",
    "encode_subscribe",
    "reason_name",
]

# Packet types: the high nibble of the first byte.
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9
PINGRESP = 13
DISCONNECT = 14

PINGREQ = b"\xc0\x00"
DISCONNECT_NORMAL = b"\xe0\x00"
_PUBACK_HEADER = b"\x40\x02"  # PUBACK, remaining length 2: reason Success, no properties


class MqttProtocolError(BrokerError):
    """The broker sent something malformed, or a packet this session never asked for."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def encode_connect(
    *,
    client_id: str,
    username: str | None,
    password: str | None,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
) -> bytes:
    """CONNECT (MQTT 5) with session expiry and receive maximum, no will."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= 0x02 if clean_start else 0
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no hints here
    properties.SessionExpiryInterval = session_expiry_s
    properties.ReceiveMaximum = receive_maximum
    body = b"\x00\x04MQTT\x05" + bytes((flags,)) + keepalive_s.to_bytes(2, "big")
    body += properties.pack() + _string(client_id)  # type: ignore[no-untyped-call]
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, filters: Sequence[str], qos: int = 1) -> bytes:
    """SUBSCRIBE to each filter with maximum QoS `qos` (no local off, as shared ones need)."""
    body = packet_id.to_bytes(2, "big") + b"\x00"
    for topic_filter in filters:
        body += _string(topic_filter) + bytes((qos,))
    return _packet(0x82, body)


def encode_publish(
    topic: str, packet_id: int, payload: bytes, properties: bytes = b"\x00"
) -> bytes:
    """PUBLISH with QoS 1, not retained; `properties` are packed with their length prefix."""
    return _packet(0x32, _string(topic) + packet_id.to_bytes(2, "big") + properties + payload)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK with reason Success (the short form)."""
    return _PUBACK_HEADER + packet_id.to_bytes(2, "big")


class PacketReader:
    """Splits the byte stream from the broker into packets, keeping a partial one for later."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Return the complete packets as (first byte, body), in the order they came."""
        buffer = self._pending + data if self._pending else data
        packets: list[tuple[int, bytes]] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            length = buffer[pos + 1]
            head = pos + 2
            if length & 0x80:
                length, head = _remaining_length(buffer, pos)
                if head < 0:
                    break
            stop = head + length
            if stop > end:
                break
            packets.append((buffer[pos], buffer[head:stop]))
            pos = stop
        self._pending = buffer[pos:] if pos < end else b""
        return packets


def _remaining_length(buffer: bytes, pos: int) -> tuple[int, int]:
    """(length, index of the body) of the packet at `pos`; (0, -1) if the header is incomplete."""
    value, shift, index = 0, 0, pos + 1
    while index < len(buffer):
        byte = buffer[index]
        value |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return value, index
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed remaining length (more than 4 bytes)")
    return 0, -1


def _skip_properties(body: bytes, pos: int) -> int:
    """Index just after the properties that start at `pos`."""
    length = body[pos]
    if not length & 0x80:
        return pos + 1 + length
    value, shift = 0, 0
    while True:
        byte = body[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return pos + value
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed property length")


def decode_publish(first_byte: int, body: bytes) -> tuple[str, int, int, bool, bytes]:
    """(topic, packet id (0 for QoS 0), QoS, retain, payload) of a PUBLISH."""
    qos = (first_byte >> 1) & 0x03
    try:
        size = (body[0] << 8) | body[1]
        if size == 0:
            raise MqttProtocolError("PUBLISH without a topic (topic aliases were not allowed)")
        pos = 2 + size
        topic = body[2:pos].decode()
        packet_id = 0
        if qos:
            if qos == 3:
                raise MqttProtocolError("PUBLISH with QoS 3")
            packet_id = (body[pos] << 8) | body[pos + 1]
            pos += 2
        pos = _skip_properties(body, pos)
    except (IndexError, UnicodeDecodeError) as exc:
        raise MqttProtocolError(f"malformed PUBLISH: {exc}") from exc
    if pos > len(body):
        raise MqttProtocolError("malformed PUBLISH: properties beyond the packet")
    return topic, packet_id, qos, bool(first_byte & 0x01), body[pos:]


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason_code: int
    properties: Properties


def decode_connack(body: bytes) -> Connack:
    if len(body) < 3:
        raise MqttProtocolError("malformed CONNACK")
    properties = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    try:
        properties.unpack(body[2:])  # type: ignore[no-untyped-call]
    except (IndexError, ValueError, KeyError) as exc:
        raise MqttProtocolError(f"malformed CONNACK properties: {exc}") from exc
    return Connack(bool(body[0] & 0x01), body[1], properties)


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, one reason code per filter) of a SUBACK."""
    if len(body) < 3:
        raise MqttProtocolError("malformed SUBACK")
    try:
        pos = _skip_properties(body, 2)
    except IndexError as exc:
        raise MqttProtocolError("malformed SUBACK properties") from exc
    return (body[0] << 8) | body[1], list(body[pos:])


def decode_puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK; the short form means Success."""
    if len(body) < 2:
        raise MqttProtocolError("malformed PUBACK")
    return (body[0] << 8) | body[1], body[2] if len(body) > 2 else 0


def decode_disconnect(body: bytes) -> int:
    """The reason code of a DISCONNECT from the broker (none means normal disconnection)."""
    return body[0] if body else 0


def reason_name(packet_type: int, code: int) -> str:
    """A reason code as people read it, e.g. 'Not authorized (135)'."""
    try:
        name = str(ReasonCode(packet_type, identifier=code))
    except (KeyError, ValueError):
        name = "unknown"
    return f"{name} ({code})"
