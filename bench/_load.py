"""Load generator: processes that publish cars' telemetry at a controlled rate, QoS 1.

Each process owns a share of the cars, one MQTT 5 connection per car with the car's own
account (the broker's ACL lets a car publish only on its own topics). Publishes are
pipelined: up to `WINDOW` per car await their PUBACK, so the rate does not depend on the
round trip. The controller steers every process through shared memory:

- `rate`: messages per second this process aims at (0 pauses it);
- `limit`: how many messages it may have published in total (a credit the controller
  raises as the consumer keeps up: a closed loop, so a backlog at the broker stays bounded).

Each message is one telemetry sample whose `ts` is the moment it was built, so that
commit time minus `ts` is the publish-to-commit latency.
"""

from __future__ import annotations

import multiprocessing as mp
import selectors
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench._mqttwire import (
    DISCONNECT,
    PINGREQ,
    AckReader,
    MqttWireError,
    connect_packet,
    publish_qos1,
    read_connack,
    topic_field,
)
from gateway.devstack import BrokerAccount
from schemas import TelemetryMessage, TopicKind, vehicle_topic

__all__ = ["LoadControl", "PublisherProcess", "telemetry_payload"]

# Unacknowledged publishes per car (Mosquitto's receive maximum for clients is 1000).
WINDOW = 500
_TICK_S = 0.005
_ACK_PERIOD_S = 0.1
# Pacing debt older than this is forgiven: after a pause the generator does not burst.
_MAX_DEBT_S = 0.1
_KEEPALIVE_S = 60

# A car's periodic sample: position, motion, energy, body; about 300 bytes of JSON.
_TEMPLATE = (
    '{"v":1,"vin":"%s","boot_id":"%s","samples":[{"seq":%d,"ts":%d,"signals":{'
    '"lat":%.6f,"lon":%.6f,"heading":%.1f,"speed":%.1f,"fuel":%.1f,"odometer":%.1f,'
    '"batt_v":%.2f,"ignition":true,"locked":false}}]}'
)


def telemetry_payload(vin: str, boot_id: str, seq: int, ts: int) -> bytes:
    """The payload the generator publishes (also used to build the raw COPY's rows)."""
    return (
        _TEMPLATE
        % (
            vin,
            boot_id,
            seq,
            ts,
            48.1 + (seq % 1000) * 1e-5,
            11.5 + (seq % 777) * 1e-5,
            (seq * 7) % 360,
            (seq * 3) % 130,
            60.0 - (seq % 500) * 0.01,
            48213.7 + seq * 0.01,
            12.6,
        )
    ).encode()


def check_payload() -> int:
    """Validate the template against the protocol model; return a payload's size in bytes."""
    vin = "WVWZZZ1JZXW000001"
    payload = telemetry_payload(vin, str(uuid.uuid4()), 12345, time.time_ns() // 1_000_000)
    TelemetryMessage.model_validate_json(payload)
    return len(payload)


@dataclass
class LoadControl:
    """Shared memory between the controller and one publisher process."""

    rate: Any
    limit: Any
    published: Any
    acked: Any
    refused: Any
    connected: Any
    stop: Any

    @classmethod
    def create(cls) -> LoadControl:
        def value(code: str) -> Any:
            return mp.Value(code, 0, lock=False)  # no lock: each value has one writer

        return cls(
            rate=value("d"),
            limit=value("q"),
            published=value("q"),
            acked=value("q"),
            refused=value("q"),
            connected=value("q"),
            stop=mp.Event(),
        )


class _Car:
    __slots__ = ("acks", "boot_id", "inflight", "next_id", "pending", "seq", "sock", "topic", "vin")

    def __init__(self, account: BrokerAccount, sock: socket.socket) -> None:
        self.vin = account.username
        self.sock = sock
        self.topic = topic_field(vehicle_topic(self.vin, TopicKind.TELEMETRY))
        self.boot_id = str(uuid.uuid4())
        self.seq = 0
        self.next_id = 1
        self.inflight = 0
        self.pending: list[bytes] = []
        self.acks = AckReader()


class PublisherProcess:
    """One load-generator process (start it with `start()`; steer it with its control)."""

    def __init__(self, accounts: list[BrokerAccount], control: LoadControl) -> None:
        self.control = control
        self._process = mp.Process(
            target=_publish, args=(accounts, control), name="bench-publisher", daemon=True
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> None:
        self._process.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.control.stop.set()
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()


def _connect(account: BrokerAccount) -> socket.socket:
    sock = socket.create_connection((account.host, account.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    packet = connect_packet(account.username, account.username, account.password, _KEEPALIVE_S)
    sock.sendall(packet)
    read_connack(sock)
    sock.setblocking(False)
    return sock


def _publish(accounts: list[BrokerAccount], control: LoadControl) -> None:
    cars = [_Car(account, _connect(account)) for account in accounts]
    control.connected.value = len(cars)
    selector = selectors.DefaultSelector()
    for car in cars:
        selector.register(car.sock, selectors.EVENT_READ, car)
    try:
        _run(cars, control, selector)
    finally:
        for car in cars:
            try:
                car.sock.setblocking(True)
                car.sock.sendall(DISCONNECT)
                car.sock.close()
            except OSError:
                pass


class _Pacer:
    """How many messages are due now: `rate` per second, at most `limit` in all."""

    def __init__(self, control: LoadControl) -> None:
        self._control = control
        self._rate = 0.0
        self._origin = time.monotonic()
        self._sent_at_origin = 0

    def due(self, now: float, published: int) -> int:
        rate = self._control.rate.value
        if rate != self._rate:
            self._rate, self._origin, self._sent_at_origin = rate, now, published
        due = int((now - self._origin) * rate) - (published - self._sent_at_origin)
        if due > rate * _MAX_DEBT_S:
            self._origin, self._sent_at_origin = now - _MAX_DEBT_S, published
            due = int(rate * _MAX_DEBT_S)
        limit: int = self._control.limit.value
        return min(due, limit - published)


def _run(cars: list[_Car], control: LoadControl, selector: selectors.BaseSelector) -> None:
    published = acked = 0
    pacer = _Pacer(control)
    next_ping = time.monotonic() + _KEEPALIVE_S / 3
    next_stats = time.monotonic() + 1.0
    next_acks = time.monotonic()
    turn = 0
    while not control.stop.is_set():
        now = time.monotonic()
        count, turn = _fill(cars, pacer.due(now, published), turn)
        published += count
        control.published.value = published
        if now >= next_ping:
            for car in cars:
                _send(car, PINGREQ)
            next_ping = now + _KEEPALIVE_S / 3
        if now >= next_stats:
            control.refused.value = sum(car.acks.refused for car in cars)
            next_stats = now + 1.0
        if now >= next_acks:
            # Not every tick: with thousands of cars, a read per tick would find about one
            # PUBACK per socket, a system call per message.
            acked += _read_acks(selector, 0.0)
            next_acks = now + _ACK_PERIOD_S
        time.sleep(max(0.0, _TICK_S - (time.monotonic() - now)))
        control.acked.value = acked


def _fill(cars: list[_Car], due: int, turn: int) -> tuple[int, int]:
    """Build `due` messages round-robin over the cars with room in their window, send them
    (one write per car); return how many were sent and whose turn is next."""
    dirty: list[_Car] = []
    count, misses, total = 0, 0, len(cars)
    while count < due and misses < total:
        car = cars[turn]
        turn = (turn + 1) % total
        if car.inflight >= WINDOW:
            misses += 1
            continue
        misses = 0
        seq = car.seq
        car.seq = seq + 1
        payload = telemetry_payload(car.vin, car.boot_id, seq, time.time_ns() // 1_000_000)
        if not car.pending:
            dirty.append(car)
        car.pending.append(publish_qos1(car.topic, car.next_id, payload))
        car.next_id = car.next_id % 65535 + 1
        car.inflight += 1
        count += 1
    for car in dirty:
        _send(car, b"".join(car.pending))
        car.pending.clear()
    return count, turn


def _read_acks(selector: selectors.BaseSelector, timeout: float) -> int:
    """Wait up to `timeout` for PUBACKs; return how many arrived."""
    acked = 0
    for key, _ in selector.select(timeout):
        car = key.data
        try:
            data = car.sock.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            raise MqttWireError(f"the broker closed car {car.vin}'s connection")
        got = car.acks.feed(data)
        car.inflight -= got
        acked += got
    return acked


def _send(car: _Car, data: bytes) -> None:
    try:
        sent = car.sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        # The socket buffer is full (rare: the broker reads fast): wait for room.
        car.sock.setblocking(True)
        try:
            car.sock.sendall(data[sent:])
        finally:
            car.sock.setblocking(False)
