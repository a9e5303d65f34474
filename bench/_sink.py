"""Plain subscribers: QoS 1, a shared subscription, they count and do nothing else.

- `CountingSubscriber` (paho-mqtt, automatic acknowledgement: each PUBACK as soon as
  `on_message` returns) measures what the broker and the load generator deliver to an
  ordinary Python MQTT client: `raw_broker_msgs_per_s`, the figure the gateway is compared with.
- `WireSubscriber` (plain socket, the gateway's MQTT framing, the PUBACKs of each read in one
  write) measures what the broker and the load generator can deliver at all on this machine:
  `raw_broker_wire_msgs_per_s`.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
import signal
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.devstack import BrokerAccount
from gateway.ingest.mqtt_wire import (
    PUBLISH,
    SUBACK,
    PacketReader,
    encode_connect,
    encode_puback,
    encode_subscribe,
)
from schemas import TopicKind, shared_subscription

__all__ = [
    "CountingSubscriber",
    "SubscriberProcess",
    "WireSubscriber",
    "publish_topic",
    "read_publishes",
]


class SubscriberProcess:
    """A subscriber in a process of its own: `start` returns once it has subscribed."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        self._ready = mp.Event()
        self._process = mp.Process(target=target, args=(*args, self._ready), name=name, daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout_s: float = 30.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"{self._process.name} did not subscribe in time")

    def stop(self) -> None:
        # Its session ends with the process (session expiry 0): nothing stays queued for it.
        self._process.terminate()
        self._process.join(10)


class CountingSubscriber(SubscriberProcess):
    """A subscriber process of share group `group`; `received` counts its messages."""

    def __init__(self, account: BrokerAccount, group: str) -> None:
        self.received: Any = mp.Value("q", 0, lock=False)  # no lock: one writer
        super().__init__(_count, (account, group, self.received), "bench-subscriber")


def _count(
    account: BrokerAccount,
    group: str,
    received: Any,
    ready: multiprocessing.synchronize.Event,
) -> None:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=account.username,
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(account.username, account.password)
    count = 0

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        received.value = count

    def on_subscribe(*args: Any) -> None:
        ready.set()

    def on_connect(client: mqtt.Client, *args: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on: each small PUBACK would wait for the broker's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(shared_subscription(TopicKind.TELEMETRY, group), qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect(account.host, account.port)
    client.loop_forever()


class WireSubscriber(SubscriberProcess):
    """A subscriber process on a plain socket; `received` counts its messages."""

    def __init__(self, account: BrokerAccount, group: str) -> None:
        self.received: Any = mp.Value("q", 0, lock=False)  # no lock: one writer
        super().__init__(_count_wire, (account, group, self.received), "bench-wire-subscriber")


def _count_wire(
    account: BrokerAccount,
    group: str,
    received: Any,
    ready: multiprocessing.synchronize.Event,
) -> None:
    count = 0

    def counted(publishes: list[bytes]) -> None:
        nonlocal count
        count += len(publishes)
        received.value = count

    read_publishes(
        account,
        account.username,
        [shared_subscription(TopicKind.TELEMETRY, group)],
        ready,
        counted,
    )


def publish_topic(body: bytes) -> bytes:
    """The topic of a PUBLISH packet's body."""
    size = (body[0] << 8) | body[1]
    return body[2 : 2 + size]


def read_publishes(
    account: BrokerAccount,
    client_id: str,
    filters: list[str],
    ready: multiprocessing.synchronize.Event,
    on_read: Callable[[list[bytes]], None],
) -> None:
    """Subscribe to `filters` (QoS 1) on a plain socket, then until the broker closes: hand the
    PUBLISH bodies of each read to `on_read` and acknowledge them in one write.

    The gateway's MQTT framing (`gateway.ingest.mqtt_wire`) and nothing else, so that what the
    caller counts is what the broker delivered, at the least CPU a Python reader can spend.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the bench's handler is not ours: just end
    sock = socket.create_connection((account.host, account.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        encode_connect(
            client_id=client_id,
            username=account.username,
            password=account.password,
            keepalive_s=0,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=65535,
        )
    )
    sock.sendall(encode_subscribe(1, filters))
    reader = PacketReader()
    sock.settimeout(None)
    while True:
        data = sock.recv(262144)
        if not data:
            return
        publishes = []
        acks = []
        for first_byte, body in reader.feed(data):
            kind = first_byte >> 4
            if kind == PUBLISH:
                publishes.append(body)
                if first_byte & 0x06:  # QoS 1: the packet id follows the topic
                    size = (body[0] << 8) | body[1]
                    acks.append(encode_puback((body[2 + size] << 8) | body[3 + size]))
            elif kind == SUBACK:
                ready.set()
        if acks:
            sock.sendall(b"".join(acks))
        if publishes:
            on_read(publishes)
