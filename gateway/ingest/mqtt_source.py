"""The broker side of ingest: a shared subscription with acknowledgement after commit.

paho-mqtt 2.x is used directly because it supports manual acknowledgement
(aiomqtt 2.5 does not). Its network loop runs in paho's own thread; messages
cross into asyncio through a deque with a coalesced wake-up, so the hot path
costs one append per message.

The same connection serves the command system (the broker pins client id =
username, so a gateway process has one connection): `routes` hands the
messages of other topic kinds (command results) to their own handler instead
of the ingest buffer, and `publish` sends downlink messages and awaits PUBACK.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttSettings
from gateway.errors import BrokerError
from gateway.ingest.inbound import InboundMessage
from schemas.topics import TopicKind, shared_subscription, topic_filter

__all__ = ["MqttIngestSource"]

log = structlog.get_logger(__name__)


class MqttIngestSource:
    """Receives cars' uplink messages; acknowledges each only when told to.

    Lifecycle: unopened -> opened (`async with`) -> closed. Reconnects by itself
    (paho's loop) with backoff; `connected` tells whether it is connected now.
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
        connect_timeout_s: how long `async with` waits for the first CONNACK.
        routes: more kinds to subscribe to, each delivered to its handler (called on the
            event loop) instead of `receive`; acknowledge them with `ack` as usual.
        """
        self._settings = settings
        self._routes = dict(routes or {})
        self._kinds = tuple(kinds) + tuple(kind for kind in self._routes if kind not in kinds)
        self._publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self._connect_timeout_s = connect_timeout_s
        self._buffer: collections.deque[InboundMessage] = collections.deque()
        self._generation = 0
        self._connected = False
        self._wake_scheduled = False
        self._closed = False
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_ready = asyncio.Event()
        self._first_connect = threading.Event()
        self._connect_failure: str | None = None

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
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        settings = self._settings
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no hints here
        connect_props.SessionExpiryInterval = settings.session_expiry_s
        connect_props.ReceiveMaximum = settings.receive_maximum
        self._client.connect_async(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=connect_props,
        )
        self._client.loop_start()
        try:
            await self._wait_first_connect()
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
        if self._closed or self._client is None:
            self._closed = True
            return
        self._closed = True
        client = self._client
        client.disconnect()
        # loop_stop joins paho's thread; keep the event loop free meanwhile.
        await asyncio.to_thread(client.loop_stop)
        self._connected = False
        log.info("mqtt.closed", undelivered=len(self._buffer))

    async def receive(self, max_messages: int, max_delay_s: float) -> list[InboundMessage]:
        """Wait for at least one message, then up to `max_delay_s` to fill a batch."""
        await self._data_ready.wait()
        assert self._loop is not None
        deadline = self._loop.time() + max_delay_s
        while len(self._buffer) < max_messages:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            self._data_ready.clear()
            if len(self._buffer) >= max_messages:
                break
            try:
                await asyncio.wait_for(self._data_ready.wait(), remaining)
            except TimeoutError:
                break
        return self._take(max_messages)

    def take_ready(self, max_messages: int) -> list[InboundMessage]:
        """Messages already received, without waiting (used when draining on shutdown)."""
        return self._take(max_messages)

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        """Release the broker's QoS 1 acknowledgement of committed messages.

        Returns how many were acknowledged; those from an older connection are
        skipped, since their packet ids may now name other messages.
        """
        client = self._client
        if client is None:
            return 0
        generation = self._generation
        acked = 0
        for message in messages:
            if message.qos > 0 and message.generation == generation:
                client.ack(message.mid, message.qos)
                acked += 1
        return acked

    def _take(self, max_messages: int) -> list[InboundMessage]:
        buffer = self._buffer
        count = min(max_messages, len(buffer))
        taken = [buffer.popleft() for _ in range(count)]
        if buffer:
            self._data_ready.set()
        else:
            self._data_ready.clear()
            if buffer:  # the paho thread appended between the check and the clear
                self._data_ready.set()
        return taken

    # --- paho thread -----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        settings = self._settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
        if settings.tls_ca_file is not None:
            client.tls_set(
                ca_certs=str(settings.tls_ca_file),
                certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
                keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Unacknowledged messages are bounded by the broker through ReceiveMaximum.
        client.max_inflight_messages_set(settings.receive_maximum)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        for kind, handler in self._routes.items():
            client.message_callback_add(topic_filter(kind), self._router(handler))
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failure = str(reason_code)
            log.error("mqtt.connect_refused", reason=str(reason_code))
            self._first_connect.set()
            return
        self._generation += 1
        self._connected = True
        self._connect_failure = None
        options = SubscribeOptions(qos=1)
        group = self._settings.share_group
        client.subscribe([(shared_subscription(kind, group), options) for kind in self._kinds])
        log.info(
            "mqtt.connected",
            generation=self._generation,
            session_present=bool(getattr(flags, "session_present", False)),
        )
        self._first_connect.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        if not self._closed:
            log.warning("mqtt.disconnected", reason=str(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._buffer.append(
            InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),  # a no-op for bytes; paho types it loosely
                mid=message.mid,
                qos=message.qos,
                generation=self._generation,
                received_at_ms=time.time_ns() // 1_000_000,
                retained=bool(message.retain),
            )
        )
        if not self._wake_scheduled and self._loop is not None:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake)

    def _router(
        self, handler: Callable[[InboundMessage], None]
    ) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def route(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            inbound = InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                mid=message.mid,
                qos=message.qos,
                generation=self._generation,
                received_at_ms=time.time_ns() // 1_000_000,
                retained=bool(message.retain),
            )
            if self._loop is not None:
                self._loop.call_soon_threadsafe(handler, inbound)

        return route

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._published, mid, reason_code)

    def _published(self, mid: int, reason_code: ReasonCode) -> None:
        future = self._publishes.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason_code)

    # --- downlink (event loop) ---------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, properties: Properties, *, timeout_s: float
    ) -> ReasonCode:
        """Publish with QoS 1 (not retained) and return the broker's PUBACK reason code.

        Raises:
            BrokerError: not connected now (nothing was handed to paho), or no PUBACK within
                `timeout_s` (paho may still deliver it: the receiver must tolerate a duplicate).
        """
        client = self._client
        if client is None or not self._connected or self._closed:
            raise BrokerError("not connected to the MQTT broker")
        info = client.publish(topic, payload, qos=1, retain=False, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"paho could not send to {topic}: {mqtt.error_string(info.rc)}")
        # paho reports the PUBACK through call_soon_threadsafe, so it cannot run before this.
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._publishes[info.mid] = future
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise BrokerError(f"no PUBACK for {topic} within {timeout_s:.1f} s") from exc
        finally:
            self._publishes.pop(info.mid, None)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._data_ready.set()

    async def _wait_first_connect(self) -> None:
        connected = await asyncio.to_thread(self._first_connect.wait, self._connect_timeout_s)
        settings = self._settings
        where = f"{settings.host}:{settings.port}"
        if not connected:
            raise BrokerError(
                f"no answer from the MQTT broker at {where} within "
                f"{self._connect_timeout_s:.0f} s: is it running, "
                "and are TGW_MQTT__HOST / TGW_MQTT__PORT right?"
            )
        if self._connect_failure is not None:
            raise BrokerError(
                f"the MQTT broker at {where} refused the gateway ({self._connect_failure}): "
                f"check the credentials of account {settings.username!r}"
            )
