"""The plain subscriber of `bench.fleet`: counts what the broker delivers from the cars.

One process, one plain socket (the gateway's MQTT framing from `gateway.ingest.mqtt_wire`, as
`bench._sink.WireSubscriber`), subscribed with QoS 1 to every car's telemetry, events and
status; the PUBACKs of each read go out in one write. It counts each kind and does nothing
else, so what it counts is what the broker delivered, and its CPU is small and measured apart.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
import signal
import socket
from typing import Any

from gateway.devstack import BrokerAccount
from gateway.ingest.mqtt_wire import (
    PUBLISH,
    SUBACK,
    PacketReader,
    encode_connect,
    encode_puback,
    encode_subscribe,
)
from schemas import TopicKind
from schemas.topics import topic_filter

__all__ = ["COUNTED_KINDS", "UplinkCounter"]

COUNTED_KINDS = (TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.STATUS)


class UplinkCounter:
    """A subscriber process; `count(kind)` is how many messages of that kind it received."""

    def __init__(self, account: BrokerAccount) -> None:
        self._counts: dict[TopicKind, Any] = {
            kind: mp.Value("q", 0, lock=False)  # no lock: one writer
            for kind in COUNTED_KINDS
        }
        self._ready = mp.Event()
        self._process = mp.Process(
            target=_count,
            args=(account, self._counts, self._ready),
            name="bench-fleet-subscriber",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def count(self, kind: TopicKind) -> int:
        return int(self._counts[kind].value)

    @property
    def uplink(self) -> int:
        """Telemetry and event messages received (what the cars report)."""
        return self.count(TopicKind.TELEMETRY) + self.count(TopicKind.EVENTS)

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
    counts: dict[TopicKind, Any],
    ready: multiprocessing.synchronize.Event,
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the bench's handler is not ours: just end
    sock = socket.create_connection((account.host, account.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        encode_connect(
            client_id=f"{account.username}-fleet-bench",
            username=account.username,
            password=account.password,
            keepalive_s=0,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=65535,
        )
    )
    sock.sendall(encode_subscribe(1, [topic_filter(kind) for kind in COUNTED_KINDS]))
    # The topic's last level says the kind: "/telemetry", "/events", "/status".
    suffixes = {f"/{kind.value}".encode(): counts[kind] for kind in COUNTED_KINDS}
    totals = dict.fromkeys(suffixes, 0)
    reader = PacketReader()
    sock.settimeout(None)
    while True:
        data = sock.recv(262144)
        if not data:
            return
        acks = []
        for first_byte, body in reader.feed(data):
            kind = first_byte >> 4
            if kind == PUBLISH:
                size = (body[0] << 8) | body[1]
                topic = body[2 : 2 + size]
                suffix = topic[topic.rfind(b"/") :]
                if suffix in totals:
                    totals[suffix] += 1
                if first_byte & 0x06:  # QoS 1: the packet id follows the topic
                    acks.append(encode_puback((body[2 + size] << 8) | body[3 + size]))
            elif kind == SUBACK:
                ready.set()
        if acks:
            sock.sendall(b"".join(acks))
        for suffix, total in totals.items():
            suffixes[suffix].value = total
