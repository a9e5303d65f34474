"""A car's MQTT 5 connection, lean enough for 10,000 cars in one process.

`MqttLink` speaks the part of MQTT 5 a car needs (CONNECT with a will and a session expiry,
PUBLISH QoS 0/1 with properties, PUBACK both ways, SUBSCRIBE, PINGREQ, DISCONNECT) directly
on an asyncio `Protocol`. Why not a general client: the simulator first used aiomqtt, then
paho driven by the loop; both spent most of the fleet's CPU in per-message machinery (a task,
an event and a timer per publish; a threading.Condition, a Properties object and log checks
per packet; a thread to connect). Here a publish is one `transport.write`, a PUBACK one dict
lookup and a callback, and a connect is non-blocking.

The link is an async context manager: connect on enter (bounded by `timeout_s`, raising
`BrokerError`), clean DISCONNECT on exit. `closed` completes when the connection ends: with a
`BrokerError` when it was lost, with None after an orderly disconnect. The gateway keeps using
paho; this module is only the simulated car's side, tested against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from device_sim.errors import BrokerError, CredentialsRefusedError, DeviceConfigurationError

__all__ = [
    "AckCallback",
    "InboundMessage",
    "MqttLink",
    "PublishProperties",
    "Will",
    "decode_properties",
    "encode_properties",
]

# Called with the PUBACK reason code: 0 accepted, 0x10 accepted but no subscriber, >= 0x80 refused.
AckCallback = Callable[[int], None]
_T = TypeVar("_T")

# Control packet types (first byte, high nibble).
_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 1, 2, 3, 4
NO_MATCHING_SUBSCRIBERS = 0x10  # PUBACK: accepted, but nobody subscribed, so nobody got it
REFUSED = 0x80  # PUBACK reason codes from here on are refusals
_SUBSCRIBE, _SUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 8, 9, 12, 13, 14
_PINGREQ_PACKET = b"\xc0\x00"
_DISCONNECT_PACKET = b"\xe0\x00"  # reason 0: normal disconnection, the broker drops the will

# MQTT 5 property identifiers and their wire types.
_BYTE, _TWO, _FOUR, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STR, 0x13: _TWO, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
MESSAGE_EXPIRY, RESPONSE_TOPIC, CORRELATION_DATA = 0x02, 0x08, 0x09
SESSION_EXPIRY, SERVER_KEEP_ALIVE, REASON_STRING, RECEIVE_MAXIMUM = 0x11, 0x13, 0x1F, 0x21

_REASONS = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid",
    0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
    0x89: "server busy", 0x8A: "banned", 0x8B: "server shutting down",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x90: "topic name invalid",
    0x95: "packet too large", 0x97: "quota exceeded", 0x9C: "use another server",
}  # fmt: skip


def _reason(code: int) -> str:
    return f"{_REASONS.get(code, 'error')} (0x{code:02x})"


# -- wire encoding ----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _binary(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def encode_properties(properties: dict[int, Any]) -> bytes:
    """A property block (length prefix included) from {property id: value}."""
    out = bytearray()
    for identifier, value in properties.items():
        kind = _PROPERTY_TYPES[identifier]
        out += _varint(identifier)
        if kind == _BYTE:
            out.append(value)
        elif kind == _TWO:
            out += int(value).to_bytes(2, "big")
        elif kind == _FOUR:
            out += int(value).to_bytes(4, "big")
        elif kind == _VARINT:
            out += _varint(value)
        elif kind == _STR:
            out += _utf8(value)
        elif kind == _BIN:
            out += _binary(bytes(value))
        else:
            out += _utf8(value[0]) + _utf8(value[1])
    return _varint(len(out)) + bytes(out)


def _read_varint(data: bytes | bytearray, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    for index in range(offset, min(offset + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise BrokerError("malformed packet from the broker (variable length integer)")


def decode_properties(data: bytes, offset: int) -> tuple[dict[int, Any], int]:
    """Properties at `offset` (length prefix included) as {id: value}, and the offset after."""
    length, offset = _read_varint(data, offset)
    end = offset + length
    properties: dict[int, Any] = {}
    while offset < end:
        identifier, offset = _read_varint(data, offset)
        kind = _PROPERTY_TYPES.get(identifier)
        if kind is None:
            raise BrokerError(f"malformed packet from the broker (property 0x{identifier:02x})")
        value: Any
        if kind == _BYTE:
            value, offset = data[offset], offset + 1
        elif kind == _TWO:
            value, offset = int.from_bytes(data[offset : offset + 2], "big"), offset + 2
        elif kind == _FOUR:
            value, offset = int.from_bytes(data[offset : offset + 4], "big"), offset + 4
        elif kind == _VARINT:
            value, offset = _read_varint(data, offset)
        elif kind in (_STR, _BIN):
            size = int.from_bytes(data[offset : offset + 2], "big")
            raw = bytes(data[offset + 2 : offset + 2 + size])
            value, offset = (
                (raw.decode(errors="replace") if kind == _STR else raw),
                offset + 2 + size,
            )
        else:
            pair = []
            for _ in range(2):
                size = int.from_bytes(data[offset : offset + 2], "big")
                pair.append(bytes(data[offset + 2 : offset + 2 + size]).decode(errors="replace"))
                offset += 2 + size
            value = tuple(pair)
        properties[identifier] = value
    return properties, end


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class PublishProperties:
    """The MQTT 5 publish properties a car sets (on command results)."""

    correlation_data: bytes | None = None
    response_topic: str | None = None
    message_expiry_s: int | None = None

    def encode(self) -> bytes:
        properties: dict[int, Any] = {}
        if self.message_expiry_s is not None:
            properties[MESSAGE_EXPIRY] = self.message_expiry_s
        if self.response_topic is not None:
            properties[RESPONSE_TOPIC] = self.response_topic
        if self.correlation_data is not None:
            properties[CORRELATION_DATA] = self.correlation_data
        return encode_properties(properties)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


_NO_PROPERTIES = b"\x00"


class _Housekeeper:
    """Keep-alive for every link of an event loop, from one task (not one per car)."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Housekeeper]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._links: set[MqttLink] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop = loop

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> _Housekeeper:
        keeper = cls._by_loop.get(loop)
        if keeper is None:
            keeper = cls._by_loop[loop] = cls(loop)
        return keeper

    def add(self, link: MqttLink) -> None:
        self._links.add(link)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="mqtt-housekeeping")

    def discard(self, link: MqttLink) -> None:
        self._links.discard(link)

    async def _run(self) -> None:
        while self._links:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for link in tuple(self._links):
                link.housekeeping(now)


def _frame(buffer: bytearray, offset: int, size: int) -> tuple[int, int] | None:
    """(body start, end) of the packet at `offset`, or None until all of it has arrived."""
    length, shift, index = 0, 0, offset + 1
    while True:
        if index >= size:
            return None
        byte = buffer[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise BrokerError("malformed packet from the broker (remaining length)")
    end = index + length
    return (index, end) if end <= size else None


class _Protocol(asyncio.Protocol):
    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._link._connection_made(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        link = self._link
        try:
            while True:
                bounds = _frame(buffer, offset, size)
                if bounds is None:
                    break
                body_start, end = bounds
                link._packet(buffer[offset], bytes(buffer[body_start:end]))
                offset = end
        except BrokerError as exc:
            link._fail(exc)
            buffer.clear()
            return
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._connection_lost(exc)


class MqttLink:
    """One MQTT 5 connection of a car (see the module docstring).

    Args:
        on_message: called on the loop for every message the broker delivers.
        max_inflight: QoS 1 messages awaiting PUBACK at once (the broker's Receive Maximum
            lowers it); more are held here and sent as acknowledgements come in.
        connect_slots: shared by the links of a fleet: how many may be between their TCP
            connect and their CONNACK at once (the rest wait their turn).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str | None,
        on_message: Callable[[InboundMessage], None],
        will: Will | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        clean_start: bool = True,
        timeout_s: float = 10.0,
        max_inflight: int = 100,
        tls_ca_file: Path | None = None,
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
        connect_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._connect_slots = connect_slots
        self._client_id, self._username, self._password = client_id, username, password
        self._on_message = on_message
        self._will = will
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._clean_start = clean_start
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._tls_ca_file = tls_ca_file
        self._tls_cert = (tls_cert_file, tls_key_file)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, AckCallback | None] = {}
        self._held: deque[tuple[bytes, AckCallback | None, int]] = deque()
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._orderly = False
        self._entered = False
        self._last_sent = self._last_heard = time.monotonic()
        self._ping_sent_at: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise BrokerError("an MqttLink connects once; make a new one to reconnect")
        self._entered = True
        context = self._tls_context()
        slots = self._connect_slots
        if slots is None:
            await self._open(context)
        else:
            # Bounded handshakes at once: a burst of SYNs would overflow the broker's listen
            # queue, and the kernel retransmits a dropped one only after 1, 3, 7 s.
            async with slots:
                await self._open(context)
        _Housekeeper.for_loop(self._loop).add(self)
        return self

    async def _open(self, context: ssl.SSLContext | None) -> None:
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._loop.create_connection(
                    lambda: _Protocol(self),
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host if context else None,
                )
                self._write(self._connect_packet())
                await self._connack
        except TimeoutError:
            self._close_transport()
            raise BrokerError(f"no CONNACK from {where} within {self._timeout_s} s") from None
        except OSError as exc:
            self._close_transport()
            raise BrokerError(f"cannot reach the broker at {where}: {exc}") from exc
        except BrokerError:
            self._close_transport()
            raise

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._tls_ca_file is None:
            return None
        cert, key = self._tls_cert
        try:
            context = ssl.create_default_context(cafile=str(self._tls_ca_file))
            if cert is not None:  # a client certificate, for a broker that requires one
                context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise DeviceConfigurationError(f"cannot load the unit's TLS files: {exc}") from exc
        return context

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then drops the will) and close; idempotent."""
        _Housekeeper.for_loop(self._loop).discard(self)
        transport = self._transport
        if transport is not None and not self.closed.done():
            self._orderly = True
            transport.write(_DISCONNECT_PACKET)
            transport.close()
            with contextlib.suppress(TimeoutError, BrokerError):
                async with asyncio.timeout(self._timeout_s):
                    await asyncio.shield(self.closed)
        self._close_transport()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the will (faults)."""
        if self._transport is not None:
            self._transport.abort()

    def _close_transport(self) -> None:
        _Housekeeper.for_loop(self._loop).discard(self)
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def connected(self) -> bool:
        return self._connack.done() and not self.closed.done()

    # -- operations ---------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: PublishProperties | None = None,
        on_ack: AckCallback | None = None,
    ) -> None:
        """Send a message; `on_ack` runs when the broker acknowledges it (QoS 1).

        Raises:
            BrokerError: not connected (the caller keeps the message queued).
        """
        if self._transport is None or self.closed.done():
            raise BrokerError("the connection is closed")
        data = payload.encode() if isinstance(payload, str) else payload
        props = properties.encode() if properties is not None else _NO_PROPERTIES
        if qos == 0:
            self._write(_packet(0x30 | retain, _utf8(topic) + props + data))
            if on_ack is not None:
                on_ack(0)
            return
        packet_id = self._packet_id()
        body = _utf8(topic) + packet_id.to_bytes(2, "big") + props + data
        packet = _packet(0x32 | retain, body)
        if len(self._pending) >= self._max_inflight:
            self._held.append((packet, on_ack, packet_id))
            self._pending[packet_id] = None  # reserve the id
            return
        self._pending[packet_id] = on_ack
        self._write(packet)

    async def publish_and_wait(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: PublishProperties | None = None,
    ) -> bool:
        """Publish and wait (bounded) for the acknowledgement; True if the broker accepted it."""
        future: asyncio.Future[bool] = self._loop.create_future()

        def done(reason_code: int) -> None:
            if not future.done():
                future.set_result(reason_code < REFUSED)

        self.publish(topic, payload, qos=qos, retain=retain, properties=properties, on_ack=done)
        return await self._wait(future, f"PUBACK for {topic}")

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait (bounded) for the SUBACK."""
        if self._transport is None or self.closed.done():
            raise BrokerError("the connection is closed")
        packet_id = self._packet_id()
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._subacks[packet_id] = future
        body = packet_id.to_bytes(2, "big") + _NO_PROPERTIES + _utf8(topic) + bytes((qos,))
        self._write(_packet(0x82, body))
        reasons = await self._wait(future, f"SUBACK for {topic}")
        if any(code >= 0x80 for code in reasons):
            refused = ", ".join(_reason(code) for code in reasons)
            raise BrokerError(f"the broker refused the subscription to {topic}: {refused}")

    async def _wait(self, future: asyncio.Future[_T], what: str) -> _T:
        closed = self.closed
        try:
            async with asyncio.timeout(self._timeout_s):
                done, _ = await asyncio.wait((future, closed), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise BrokerError(f"no {what} within {self._timeout_s} s") from None
        if future in done and not future.cancelled():
            return future.result()
        raise BrokerError(f"connection lost while waiting for {what}")

    def housekeeping(self, now: float) -> None:
        """Keep-alive: ping when idle, give up on a broker that stopped answering."""
        if self._transport is None or self.closed.done():
            return
        keepalive = self._keepalive_s
        if self._ping_sent_at is not None and now - self._ping_sent_at > keepalive:
            self._fail(BrokerError(f"no answer from the broker for {keepalive} s"))
        elif keepalive and now - self._last_sent >= keepalive * 0.75 and self._ping_sent_at is None:
            self._ping_sent_at = now
            self._write(_PINGREQ_PACKET)

    # -- internals ----------------------------------------------------------------------------

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending and self._next_id not in self._subacks:
                return self._next_id
        raise BrokerError("no free packet identifier (65535 messages in flight)")

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise BrokerError("the connection is closed")
        transport.write(data)
        self._last_sent = time.monotonic()

    def _connect_packet(self) -> bytes:
        flags = 0x80  # user name
        if self._password is not None:
            flags |= 0x40
        if self._clean_start:
            flags |= 0x02
        will = self._will
        payload = _utf8(self._client_id)
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            data = will.payload.encode() if isinstance(will.payload, str) else will.payload
            payload += _NO_PROPERTIES + _utf8(will.topic) + _binary(data)
        payload += _utf8(self._username)
        if self._password is not None:
            payload += _binary(self._password.encode())
        header = (
            _utf8("MQTT")
            + b"\x05"
            + bytes((flags,))
            + self._keepalive_s.to_bytes(2, "big")
            + encode_properties({SESSION_EXPIRY: self._session_expiry_s})
        )
        return _packet(0x10, header + payload)

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def _connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        _Housekeeper.for_loop(self._loop).discard(self)
        self._pending.clear()
        self._held.clear()
        for future in self._subacks.values():
            if not future.done():
                future.cancel()
        self._subacks.clear()
        error = BrokerError(f"connection lost: {exc or 'closed by the broker'}")
        if not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()  # retrieved: __aenter__ may already have given up
        if not self.closed.done():
            if self._orderly:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(error)
                self.closed.exception()  # nobody may await it: do not warn about that

    def _fail(self, error: BrokerError) -> None:
        if not self.closed.done():
            self.closed.set_exception(error)
            self.closed.exception()
        if self._transport is not None:
            self._transport.abort()

    def _packet(self, first: int, body: bytes) -> None:
        self._last_heard = time.monotonic()
        kind = first >> 4
        if kind == _PUBACK:
            self._on_puback(body)
        elif kind == _PUBLISH:
            self._on_publish(first, body)
        elif kind == _PINGRESP:
            self._ping_sent_at = None
        elif kind == _CONNACK:
            self._on_connack(body)
        elif kind == _SUBACK:
            packet_id = int.from_bytes(body[:2], "big")
            _, offset = decode_properties(body, 2)
            future = self._subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[offset:])
        elif kind == _DISCONNECT:
            code = body[0] if body else 0
            self._fail(BrokerError(f"the broker disconnected the car: {_reason(code)}"))
        else:
            self._fail(BrokerError(f"unexpected packet type {kind} from the broker"))

    def _on_connack(self, body: bytes) -> None:
        if self._connack.done():
            return
        code = body[1]
        if code >= 0x80:
            refused = CredentialsRefusedError if code in (0x86, 0x87) else BrokerError
            self._connack.set_exception(
                refused(f"the broker refused the connection: {_reason(code)}")
            )
            return
        properties, _ = decode_properties(body, 2) if len(body) > 2 else ({}, 2)
        self._max_inflight = min(self._max_inflight, properties.get(RECEIVE_MAXIMUM, 65535))
        self._keepalive_s = properties.get(SERVER_KEEP_ALIVE, self._keepalive_s)
        self._connack.set_result(None)

    def _on_puback(self, body: bytes) -> None:
        packet_id = int.from_bytes(body[:2], "big")
        reason_code = body[2] if len(body) >= 3 else 0
        callback = self._pending.pop(packet_id, None)
        if self._held:
            packet, held_callback, held_id = self._held.popleft()
            self._pending[held_id] = held_callback
            self._write(packet)
        if callback is not None:
            callback(reason_code)

    def _on_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        size = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + size].decode(errors="replace")
        offset = 2 + size
        packet_id = None
        if qos:
            packet_id = int.from_bytes(body[offset : offset + 2], "big")
            offset += 2
        properties, offset = decode_properties(body, offset)
        if packet_id is not None:
            # Acknowledge first: the car has the command (its outcome travels separately).
            self._write(_packet(0x40, packet_id.to_bytes(2, "big")))
        self._on_message(
            InboundMessage(
                topic=topic,
                payload=body[offset:],
                response_topic=properties.get(RESPONSE_TOPIC),
                correlation_data=properties.get(CORRELATION_DATA),
            )
        )
