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
import socket
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

__all__ = ["CountingSubscriber", "WireSubscriber"]


class CountingSubscriber:
    """A subscriber process of share group `group`; `received` counts its messages."""

    def __init__(self, account: BrokerAccount, group: str) -> None:
        self.received: Any = mp.Value("q", 0, lock=False)  # no lock: one writer
        self._ready = mp.Event()
        self._process = mp.Process(
            target=_count,
            args=(account, group, self.received, self._ready),
            name="bench-subscriber",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout_s: float = 30.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError("the counting subscriber did not subscribe in time")

    def stop(self) -> None:
        # Its session ends with the process (session expiry 0): nothing stays queued for it.
        self._process.terminate()
        self._process.join(10)


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


class WireSubscriber:
    """A subscriber process on a plain socket; `received` counts its messages."""

    def __init__(self, account: BrokerAccount, group: str) -> None:
        self.received: Any = mp.Value("q", 0, lock=False)  # no lock: one writer
        self._ready = mp.Event()
        self._process = mp.Process(
            target=_count_wire,
            args=(account, group, self.received, self._ready),
            name="bench-wire-subscriber",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout_s: float = 30.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError("the wire subscriber did not subscribe in time")

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)


def _count_wire(
    account: BrokerAccount,
    group: str,
    received: Any,
    ready: multiprocessing.synchronize.Event,
) -> None:
    sock = socket.create_connection((account.host, account.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        encode_connect(
            client_id=account.username,
            username=account.username,
            password=account.password,
            keepalive_s=0,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=65535,
        )
    )
    sock.sendall(encode_subscribe(1, [shared_subscription(TopicKind.TELEMETRY, group)]))
    reader = PacketReader()
    count = 0
    sock.settimeout(None)
    while True:
        data = sock.recv(262144)
        if not data:
            return
        acks = []
        for first_byte, body in reader.feed(data):
            kind = first_byte >> 4
            if kind == PUBLISH:
                count += 1
                if first_byte & 0x06:  # QoS 1: the packet id follows the topic
                    size = (body[0] << 8) | body[1]
                    acks.append(encode_puback((body[2 + size] << 8) | body[3 + size]))
            elif kind == SUBACK:
                ready.set()
        if acks:
            sock.sendall(b"".join(acks))
        received.value = count
