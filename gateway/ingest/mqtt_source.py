"""The broker side of ingest: a shared subscription with acknowledgement after commit.

One MQTT 5 session per gateway process, run on the event loop with asyncio's own transport
(`gateway.ingest.mqtt_wire` frames the packets). Messages are acknowledged only when `ack`
is called, after the batch holding them has committed; PUBACKs of a batch leave in one
write. A message costs a few µs here: no thread, no per-message wake-up, no general-purpose
client (paho-mqtt needed about 85 µs per message and a thread; see docs/benchmarks.md).

The session is persistent (clean start off, session expiry from the settings) with a stable
client id, so what was delivered and not acknowledged when the gateway died is delivered
again. MQTT 5 Receive Maximum bounds the unacknowledged messages the broker sends us, hence
our memory, and is the back-pressure when the database is slow or down.

The same connection serves the command system (the broker pins client id = username, so a
gateway process has one connection): `routes` hands the messages of other topic kinds
(command results) to their own handler instead of the ingest buffer, and `publish` sends
downlink messages and awaits their PUBACK.

Reconnection: a task keeps the session up, with jittered exponential backoff (1 s to 30 s).
Each successful connect starts a new `generation`; a packet id is only meaningful on the
connection that delivered it, so acknowledgements of older generations are dropped (the
broker redelivers those messages, and storage is idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self

import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSettings
from gateway.errors import BrokerError
from gateway.ingest.inbound import InboundMessage
from gateway.ingest.mqtt_wire import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_NORMAL,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Connack,
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
from schemas.topics import TopicKind, shared_subscription

__all__ = ["MqttIngestSource"]

log = structlog.get_logger(__name__)

_BACKOFF_MIN_S = 1.0
_BACKOFF_MAX_S = 30.0


class _RefusedError(BrokerError):
    """The broker answered, and said no (bad credentials, not authorised, ...)."""


class MqttIngestSource:
    """Receives cars' uplink messages; acknowledges each only when told to.

    Lifecycle: unopened -> opened (`async with`: connected and subscribed) -> closed.
    Reconnects by itself; `connected` tells whether it is connected now.
    """

    def __init__(
        self,
        settings: MqttSettings,
        kinds: Sequence[TopicKind],
        *,
        connect_timeout_s: float = 10.0,
        routes: Mapping[TopicKind, Callable[[InboundMessage], None]] | None = None,
    ) -> None:
        """Args:
        settings: broker address and the gateway's account.
        kinds: topic kinds to subscribe to (shared) for ingest.
        connect_timeout_s: how long `async with` waits for the first CONNACK (and each
            later connect attempt for its CONNACK and SUBACK).
        routes: more kinds to subscribe to, each delivered to its handler (called on the
            event loop) instead of `receive`; acknowledge them with `ack` as usual.
        """
        self._settings = settings
        self._routes = {kind.value: handler for kind, handler in (routes or {}).items()}
        self._kinds = tuple(kinds) + tuple(
            kind for kind in (routes or {}) if kind not in tuple(kinds)
        )
        self._connect_timeout_s = connect_timeout_s
        self._buffer: collections.deque[InboundMessage] = collections.deque()
        self._generation = 0
        self._connected = False
        self._closed = False
        self._wake_at = 1
        self._data_ready = asyncio.Event()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_outcome: asyncio.Future[str | None] | None = None
        self._publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self._last_packet_id = 0
        self._tls = _tls_context(settings)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Messages received and not yet taken by `receive`."""
        return len(self._buffer)

    @property
    def oldest_pending_received_ms(self) -> int | None:
        """When the oldest message not yet taken arrived (None when there is none)."""
        try:
            return self._buffer[0].received_at_ms
        except IndexError:
            return None

    async def __aenter__(self) -> Self:
        self._first_outcome = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._keep_session(), name="mqtt-session")
        self._task.add_done_callback(self._session_task_ended)
        try:
            await self._wait_first_connect(self._first_outcome)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect; unacknowledged messages stay in our broker session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        session = self._session
        if session is not None:
            session.close(DISCONNECT_NORMAL)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._connected = False
        log.info("mqtt.closed", undelivered=len(self._buffer))

    async def receive(self, max_messages: int, max_delay_s: float) -> list[InboundMessage]:
        """Wait for at least one message, then for a full batch, but let no message wait
        longer than `max_delay_s` since it arrived (those that came in while the previous
        batch was being written have waited already)."""
        if not self._buffer:
            await self._wait_for(1, None)
        if len(self._buffer) < max_messages:
            waited_s = time.time() - self._buffer[0].received_at_ms / 1000
            if waited_s < max_delay_s:
                await self._wait_for(max_messages, max_delay_s - waited_s)
        return self._take(max_messages)

    async def _wait_for(self, count: int, timeout_s: float | None) -> None:
        self._check_session_task()
        # Woken once `count` messages are buffered, not by every packet that arrives.
        self._wake_at = count
        self._data_ready.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._data_ready.wait()
        except TimeoutError:
            pass
        finally:
            self._wake_at = 1
        self._check_session_task()

    def take_ready(self, max_messages: int) -> list[InboundMessage]:
        """Messages already received, without waiting (used when draining on shutdown)."""
        return self._take(max_messages)

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        """Release the broker's QoS 1 acknowledgement of committed messages (one write).

        Returns how many were acknowledged; those from an older connection are
        skipped, since their packet ids may now name other messages.
        """
        session = self._session
        if session is None or not self._connected:
            return 0
        generation = self._generation
        packets = [
            encode_puback(message.mid)
            for message in messages
            if message.qos > 0 and message.generation == generation
        ]
        if packets:
            session.write(b"".join(packets))
        return len(packets)

    async def publish(
        self, topic: str, payload: bytes, properties: Properties, *, timeout_s: float
    ) -> ReasonCode:
        """Publish with QoS 1 (not retained) and return the broker's PUBACK reason code.

        Raises:
            BrokerError: not connected now (nothing was sent), the connection was lost
                before the PUBACK, or no PUBACK within `timeout_s` (the message may still
                arrive: the receiver must tolerate a duplicate).
        """
        session = self._session
        if session is None or not self._connected or self._closed:
            raise BrokerError("not connected to the MQTT broker")
        packet_id = self._next_packet_id()
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._publishes[packet_id] = future
        packed: bytes = properties.pack()  # type: ignore[no-untyped-call]  # paho ships no hints here
        try:
            session.write(encode_publish(topic, packet_id, payload, packed))
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError as exc:
            raise BrokerError(f"no PUBACK for {topic} within {timeout_s:.1f} s") from exc
        finally:
            self._publishes.pop(packet_id, None)

    def _take(self, max_messages: int) -> list[InboundMessage]:
        buffer = self._buffer
        count = min(max_messages, len(buffer))
        return [buffer.popleft() for _ in range(count)]

    def _next_packet_id(self) -> int:
        # Our own packet ids (PUBLISH, SUBSCRIBE) are independent of the broker's.
        for _ in range(0xFFFF):
            self._last_packet_id = self._last_packet_id % 0xFFFF + 1
            if self._last_packet_id not in self._publishes:
                return self._last_packet_id
        raise BrokerError("no free MQTT packet id: 65535 publishes await their PUBACK")

    # --- the session task ------------------------------------------------------------

    async def _keep_session(self) -> None:
        delay = _BACKOFF_MIN_S
        while not self._closed:
            refusal = None
            try:
                await self._run_session()
                delay = _BACKOFF_MIN_S
            except _RefusedError as exc:
                refusal = str(exc)
            except (OSError, TimeoutError, BrokerError) as exc:
                if not self._closed:
                    log.warning("mqtt.connect_failed", error=str(exc) or type(exc).__name__)
            if refusal is not None:
                log.error("mqtt.connect_refused", reason=refusal)
                if self._settle_first(refusal):
                    return
            if self._closed:
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not crypto
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _run_session(self) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            _, session = await loop.create_connection(
                lambda: _Session(self),
                settings.host,
                settings.port,
                ssl=self._tls,
                server_hostname=settings.host if self._tls is not None else None,
            )
        self._session = session
        try:
            password = settings.password.get_secret_value() if settings.password else None
            session.write(
                encode_connect(
                    client_id=settings.client_id,
                    username=settings.username,
                    password=password,
                    keepalive_s=settings.keepalive_s,
                    clean_start=False,
                    session_expiry_s=settings.session_expiry_s,
                    receive_maximum=settings.receive_maximum,
                )
            )
            async with asyncio.timeout(self._connect_timeout_s):
                connack = await session.connack
            if connack.reason_code >= 0x80:
                raise _RefusedError(reason_name(PacketTypes.CONNACK, connack.reason_code))
            keepalive_s = getattr(connack.properties, "ServerKeepAlive", settings.keepalive_s)
            await self._subscribe(session)
            log.info(
                "mqtt.connected",
                generation=self._generation,
                session_present=connack.session_present,
            )
            self._settle_first(None)
            await session.serve(keepalive_s)
        finally:
            self._connected = False
            self._session = None
            session.close()
            lost = BrokerError("the connection to the broker was lost before the PUBACK")
            for future in self._publishes.values():
                if not future.done():
                    future.set_exception(lost)
            if session.lost_reason is not None and not self._closed:
                log.warning("mqtt.disconnected", reason=session.lost_reason)

    async def _subscribe(self, session: _Session) -> None:
        group = self._settings.share_group
        filters = [shared_subscription(kind, group) for kind in self._kinds]
        packet_id = self._next_packet_id()
        waiter = session.expect_suback(packet_id)
        session.write(encode_subscribe(packet_id, filters, qos=1))
        async with asyncio.timeout(self._connect_timeout_s):
            codes = await waiter
        refused = {f: c for f, c in zip(filters, codes, strict=False) if c >= 0x80}
        if refused or len(codes) != len(filters):
            reasons = ", ".join(
                f"{f}: {reason_name(PacketTypes.SUBACK, c)}" for f, c in refused.items()
            )
            raise _RefusedError(f"subscriptions refused ({reasons or 'SUBACK incomplete'})")

    def _settle_first(self, refusal: str | None) -> bool:
        """Report the first connect's outcome to `__aenter__`; True if this was it."""
        outcome = self._first_outcome
        if outcome is None or outcome.done():
            return False
        outcome.set_result(refusal)
        return True

    def _session_task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._closed:
            log.error("mqtt.session_task_failed", error=repr(task.exception()))
        self._data_ready.set()  # a waiting `receive` must see it

    def _check_session_task(self) -> None:
        task = self._task
        if task is None or not task.done() or self._closed:
            return
        error = None if task.cancelled() else task.exception()
        raise BrokerError(f"the broker session stopped: {error!r}") from error

    async def _wait_first_connect(self, outcome: asyncio.Future[str | None]) -> None:
        settings = self._settings
        where = f"{settings.host}:{settings.port}"
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                refusal = await asyncio.shield(outcome)
        except TimeoutError:
            raise BrokerError(
                f"no answer from the MQTT broker at {where} within "
                f"{self._connect_timeout_s:.0f} s: is it running, "
                "and are TGW_MQTT__HOST / TGW_MQTT__PORT right?"
            ) from None
        if refusal is not None:
            raise BrokerError(
                f"the MQTT broker at {where} refused the gateway ({refusal}): "
                f"check the credentials of account {settings.username!r}"
            )

    # --- called by the session protocol, on the event loop ---------------------------

    def _connected_now(self, session_present: bool) -> None:
        # Right at CONNACK, before any message that follows it in the same read.
        self._generation += 1
        self._connected = True

    def _received(self, packets: list[tuple[int, bytes]], session: _Session) -> None:
        """Handle one read's packets in order; PUBLISH is the hot path."""
        received_at_ms = time.time_ns() // 1_000_000
        buffer = self._buffer
        routes = self._routes
        generation = self._generation
        for first_byte, body in packets:
            if first_byte >> 4 != PUBLISH:
                session.control(first_byte, body)
                generation = self._generation  # a CONNACK starts a new one
                continue
            topic, packet_id, qos, retained, payload = decode_publish(first_byte, body)
            message = InboundMessage(
                topic,
                payload,
                packet_id,
                qos,
                generation,
                received_at_ms,
                retained,
                bool(first_byte & 0x08),
            )
            if routes:
                handler = routes.get(topic[topic.rfind("/") + 1 :])
                if handler is not None:
                    handler(message)
                    continue
            buffer.append(message)
        if len(buffer) >= self._wake_at:
            self._data_ready.set()

    def _puback(self, packet_id: int, reason_code: int) -> None:
        future = self._publishes.get(packet_id)
        if future is not None and not future.done():
            future.set_result(ReasonCode(PacketTypes.PUBACK, identifier=reason_code))


class _Session(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker."""

    def __init__(self, source: MqttIngestSource) -> None:
        loop = asyncio.get_running_loop()
        self._source = source
        self._loop = loop
        self._reader = PacketReader()
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []
        self.connack: asyncio.Future[Connack] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._lost: asyncio.Future[None] = loop.create_future()
        self.lost_reason: str | None = None
        self._last_received = loop.time()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        try:
            self._source._received(self._reader.feed(data), self)
        except MqttProtocolError as exc:
            self._fail(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost_reason is None:
            self.lost_reason = str(exc) if exc is not None else "closed by the broker"
        error = BrokerError(f"connection lost: {self.lost_reason}")
        if not self.connack.done():
            self.connack.set_exception(error)
        for waiter in self._subacks.values():
            if not waiter.done():
                waiter.set_exception(error)
        if not self._lost.done():
            self._lost.set_result(None)

    # used by the source

    def write(self, data: bytes) -> None:
        """Send `data` at the end of this turn of the event loop, with whatever else is written
        in it: a dispatch batch's publishes leave in one system call, not one each (on loopback
        a send costs the receiver's TCP work too)."""
        if self._transport is None or self._transport.is_closing():
            return
        if not self._unsent:
            self._loop.call_soon(self._send_unsent)
        self._unsent.append(data)

    def _send_unsent(self) -> None:
        data = b"".join(self._unsent)
        self._unsent.clear()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def expect_suback(self, packet_id: int) -> asyncio.Future[list[int]]:
        waiter: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[packet_id] = waiter
        return waiter

    def close(self, farewell: bytes = b"") -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._send_unsent()  # what was written before the farewell goes before it
            if farewell:
                transport.write(farewell)
            transport.close()

    async def serve(self, keepalive_s: int) -> None:
        """Keep the connection alive until it is lost (PINGREQ every half keep-alive)."""
        interval = max(keepalive_s / 2, 1.0)
        while not self._lost.done():
            try:
                async with asyncio.timeout(interval):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                if self._loop.time() - self._last_received > keepalive_s * 1.5:
                    self._fail(f"no answer from the broker for {keepalive_s * 1.5:.0f} s")
                else:
                    self.write(PINGREQ)

    def control(self, first_byte: int, body: bytes) -> None:
        """A packet other than PUBLISH."""
        kind = first_byte >> 4
        if kind == PUBACK:
            self._source._puback(*decode_puback(body))
        elif kind == PINGRESP:
            pass
        elif kind == CONNACK and not self.connack.done():
            connack = decode_connack(body)
            if connack.reason_code < 0x80:
                self._source._connected_now(connack.session_present)
            self.connack.set_result(connack)
        elif kind == SUBACK:
            packet_id, codes = decode_suback(body)
            waiter = self._subacks.pop(packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(codes)
        elif kind == DISCONNECT:
            code = decode_disconnect(body)
            self.lost_reason = (
                f"the broker disconnected us: {reason_name(PacketTypes.DISCONNECT, code)}"
            )
            self.close()
        else:
            raise MqttProtocolError(f"unexpected packet type {kind} from the broker")

    def _fail(self, reason: str) -> None:
        self.lost_reason = reason
        if self._transport is not None:
            self._transport.abort()


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """TLS as paho's `tls_set` did it: verify the broker against the CA file, and the host name."""
    if settings.tls_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
    if settings.tls_cert_file is not None:
        key = str(settings.tls_key_file) if settings.tls_key_file else None
        context.load_cert_chain(str(settings.tls_cert_file), key)
    return context
