"""Just enough MQTT 5 on a plain socket for a load generator: CONNECT, PUBLISH QoS 1, PUBACK.

paho-mqtt spends about 150 µs of CPU per QoS 1 publish on this machine (a packet object, a
message-info object and a `send` per message, an MQTT 5 properties object per PUBACK), so a
paho load generator would need most of a core for the rate the gateway is asked to take, on
the same two cores as the gateway. Building the packets directly and writing all of a car's
pending packets with one `send` costs a few µs per message, so the generator is not what
limits the benchmark (its ceiling is reported as `raw_broker_msgs_per_s`).
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "DISCONNECT",
    "PINGREQ",
    "AckReader",
    "MqttWireError",
    "connect_packet",
    "publish_qos1",
    "read_connack",
]

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
_PUBACK, _CONNACK, _PINGRESP, _DISCONNECT = 0x40, 0x20, 0xD0, 0xE0
# PUBACK reason codes that mean "accepted": success, and "no matching subscribers".
_ACCEPTED = frozenset({0x00, 0x10})


class MqttWireError(Exception):
    """The broker refused or dropped a connection, or sent something unexpected."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str16(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect_packet(client_id: str, username: str, password: str, keepalive_s: int) -> bytes:
    """MQTT 5 CONNECT with clean start, user name and password, no properties."""
    flags = 0x80 | 0x40 | 0x02
    variable = b"\x00\x04MQTT\x05" + bytes([flags]) + struct.pack("!H", keepalive_s) + b"\x00"
    payload = _str16(client_id.encode()) + _str16(username.encode()) + _str16(password.encode())
    body = variable + payload
    return b"\x10" + _varint(len(body)) + body


def read_connack(sock: socket.socket) -> None:
    """Read the CONNACK (blocking); raise `MqttWireError` unless the broker accepted us."""
    header = _recv_exact(sock, 2)
    if header[0] != _CONNACK:
        raise MqttWireError(f"expected CONNACK, got packet type {header[0] >> 4}")
    length, extra = header[1], b""
    if length & 0x80:  # a CONNACK with properties can exceed 127 bytes
        extra = _recv_exact(sock, 1)
        length = (length & 0x7F) + 128 * extra[0]
    body = _recv_exact(sock, length)
    if body[1] != 0:
        raise MqttWireError(f"the broker refused the connection (reason code 0x{body[1]:02x})")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MqttWireError("the broker closed the connection")
        data += chunk
    return data


def publish_qos1(topic_field: bytes, packet_id: int, payload: bytes) -> bytes:
    """One PUBLISH, QoS 1, no properties; `topic_field` is the topic with its length prefix."""
    body_length = len(topic_field) + 3 + len(payload)
    return b"".join(
        (b"\x32", _varint(body_length), topic_field, packet_id.to_bytes(2, "big"), b"\x00", payload)
    )


def topic_field(topic: str) -> bytes:
    """A topic as PUBLISH carries it (length-prefixed UTF-8)."""
    return _str16(topic.encode())


class AckReader:
    """Counts PUBACKs in the byte stream from the broker (packets may span reads)."""

    __slots__ = ("_buffer", "refused")

    def __init__(self) -> None:
        self._buffer = b""
        self.refused = 0

    def feed(self, data: bytes) -> int:
        """Consume received bytes; return how many PUBACKs they completed."""
        buffer = self._buffer + data if self._buffer else data
        acks, pos, end = 0, 0, len(buffer)
        while pos + 2 <= end:
            kind = buffer[pos] & 0xF0
            length = buffer[pos + 1]
            head = 2
            if length & 0x80:  # PUBACKs are short; only other packets get here
                length, head, ok = _long_length(buffer, pos)
                if not ok:
                    break
            if pos + head + length > end:
                break
            if kind == _PUBACK:
                acks += 1
                if length >= 3 and buffer[pos + 4] not in _ACCEPTED:
                    self.refused += 1
            elif kind == _DISCONNECT:
                reason = buffer[pos + 2] if length else 0
                raise MqttWireError(f"the broker disconnected us (reason code 0x{reason:02x})")
            elif kind != _PINGRESP:
                raise MqttWireError(f"unexpected packet type {kind >> 4} from the broker")
            pos += head + length
        self._buffer = buffer[pos:]
        return acks


def _long_length(buffer: bytes, pos: int) -> tuple[int, int, bool]:
    value, multiplier, index = 0, 1, pos + 1
    while index < len(buffer):
        byte = buffer[index]
        value += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            return value, index - pos, True
    return 0, 0, False
