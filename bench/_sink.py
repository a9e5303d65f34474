"""The plain subscriber: paho-mqtt, QoS 1, a shared subscription, counts and does nothing else.

It measures what the broker and the load generator deliver to a Python MQTT client on this
machine, the ceiling the gateway is compared with (`raw_broker_msgs_per_s`). paho's automatic
acknowledgement sends each PUBACK as soon as `on_message` returns.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.devstack import BrokerAccount
from schemas import TopicKind, shared_subscription

__all__ = ["CountingSubscriber"]


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
