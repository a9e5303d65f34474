"""Lean cars for the reconnect storm: store and forward on plain sockets, nothing else.

`device_sim` spends its CPU on what makes a car a car (a driving model, CAN frames, decoding
with the vehicle's profile, an SQLite queue); 20,000 of them want about three cores, which this
two-core machine cannot give beside broker, gateway and database (measured: docs/operations.md).
The storm is about what the gateway and the broker see, and these cars produce exactly that,
at a few microseconds per message:

- each car has its own account and a persistent session (clean start off, session expiry), and
  takes a sample every `driving_interval_s` or `parked_interval_s` (chosen per car, seeded);
- online, each sample goes out at once, one per message (QoS 1);
- `offline` (set by the controller): every connection is dropped abruptly (RST, no DISCONNECT:
  the broker sees a lost connection) and samples queue in the car;
- back online: every car reconnects at the same moment (a CONNACK deadline of 10 s, then
  jittered exponential backoff), then drains its queue oldest first in messages of up to
  `batch` samples (at most `window` in flight, `drain_msgs_per_s` per car) while its live
  samples keep going out as they are taken;
- the ledger: a sample's (vin, boot id, seq) is written once the broker acknowledges the message
  carrying it (PUBACK 0x00), and also to the live ledger if it went out as it was taken; a
  PUBACK with "no matching subscribers" (0x10) puts the samples back in the queue, as
  protocol v1 asks of a car.

The samples are valid protocol v1 telemetry (`check_sample` validates one).
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing as mp
import os
import random
import selectors
import socket
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.devstack import BrokerAccount
from schemas import TelemetryMessage, TopicKind, vehicle_topic

__all__ = ["LeanFleet", "LeanFleetOptions", "check_sample"]

_SESSION_EXPIRY_S = 3600
_KEEPALIVE_S = 60
_CONNACK_TIMEOUT_S = 10.0
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0
_TICK_S = 0.01
_PINGREQ = b"\xc0\x00"
_SAMPLE = (
    '{"seq":%d,"ts":%d,"signals":{"lat":%.6f,"lon":%.6f,"heading":%.1f,"speed":%.1f,'
    '"fuel":%.1f,"odometer":%.1f,"batt_v":12.6,"ignition":%s,"locked":%s}}'
)


def _sample(seq: int, ts: int, driving: bool) -> str:
    return _SAMPLE % (
        seq, ts, 48.137 + (seq % 997) * 1e-5, 11.575 + (seq % 991) * 1e-5, (seq * 7) % 360,
        30.0 if driving else 0.0, 60.0 - (seq % 500) * 0.01, 48213.7 + seq * 0.1,
        "true" if driving else "false", "false" if driving else "true",
    )  # fmt: skip


def _message(vin: str, boot_id: str, samples: list[str]) -> bytes:
    return f'{{"v":1,"vin":"{vin}","boot_id":"{boot_id}","samples":[{",".join(samples)}]}}'.encode()


def check_sample() -> int:
    """Validate a message of two samples against protocol v1; return one sample's size."""
    ts = time.time_ns() // 1_000_000
    samples = [_sample(1, ts, True), _sample(2, ts + 1, False)]
    TelemetryMessage.model_validate_json(_message("WVWZZZ1JZXW000001", uuid.uuid4().hex, samples))
    return len(samples[0])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str16(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _connect_packet(username: str, password: str) -> bytes:
    """MQTT 5 CONNECT: resume the session (clean start off), session expiry, no will."""
    props = b"\x11" + struct.pack("!I", _SESSION_EXPIRY_S)
    variable = b"\x00\x04MQTT\x05\xc0" + struct.pack("!H", _KEEPALIVE_S)
    variable += _varint(len(props)) + props
    payload = _str16(username.encode()) * 2 + _str16(password.encode())
    body = variable + payload
    return b"\x10" + _varint(len(body)) + body


def _publish(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    length = len(topic) + 3 + len(payload)
    return b"".join((b"\x32", _varint(length), topic, packet_id.to_bytes(2, "big"), b"\0", payload))


@dataclass(frozen=True, slots=True)
class LeanFleetOptions:
    driving_share: float = 0.2
    driving_interval_s: float = 10.0
    parked_interval_s: float = 60.0
    batch: int = 200
    window: int = 4
    drain_msgs_per_s: float = 20.0
    seed: int = 1


class _Car:
    __slots__ = (
        "account", "backoff", "boot_id", "buffer", "connack_by", "connected", "driving",
        "index", "inflight", "interval", "last_drain", "live_ids", "next_id", "out", "queue",
        "retry_at", "seq", "sock", "topic", "vin",
    )  # fmt: skip

    def __init__(
        self, index: int, account: BrokerAccount, rng: random.Random, options: LeanFleetOptions
    ) -> None:
        self.index = index
        self.account = account
        self.vin = account.username
        self.topic = _str16(vehicle_topic(self.vin, TopicKind.TELEMETRY).encode())
        self.boot_id = uuid.UUID(int=rng.getrandbits(128)).hex
        self.driving = rng.random() < options.driving_share
        self.interval = options.driving_interval_s if self.driving else options.parked_interval_s
        self.seq = 0
        self.queue: deque[tuple[int, int, str]] = deque()  # (seq, ts, sample json)
        self.inflight: dict[int, list[tuple[int, int, str]]] = {}
        self.live_ids: set[int] = set()  # packet ids of samples sent live (not from the queue)
        self.next_id = 1
        self.sock: socket.socket | None = None
        self.connected = False
        self.connack_by = 0.0
        self.retry_at = 0.0
        self.backoff = _BACKOFF_MIN_S
        self.buffer = b""
        self.out = b""
        self.last_drain = 0.0


@dataclass
class _Shared:
    offline: Any
    stop: Any
    connected: Any
    queued: Any
    queued_online: Any  # in connected cars: what the broker could be taking now
    acked: Any
    published: Any
    connect_failures: Any
    no_subscriber: Any


class LeanFleet:
    """`cars` split over `processes` worker processes; `offline` steers all of them."""

    def __init__(
        self,
        accounts: list[BrokerAccount],
        processes: int,
        options: LeanFleetOptions,
        ledger_dir: Path,
        connect_rate: float = 500.0,
    ) -> None:
        self.cars = len(accounts)
        ledger_dir.mkdir(parents=True, exist_ok=True)
        self.ledgers = [ledger_dir / f"lean-ledger.p{i}" for i in range(processes)]
        # The ledger lines of the samples sent live (as taken), not from a car's queue.
        self.live_ledgers = [ledger_dir / f"lean-live.p{i}" for i in range(processes)]
        self._offline = mp.Value("b", 0, lock=False)
        self._stop = mp.Event()
        self._shared = [
            _Shared(
                offline=self._offline,
                stop=self._stop,
                **{
                    name: mp.Value("q", 0, lock=False)
                    for name in (
                        "connected",
                        "queued",
                        "queued_online",
                        "acked",
                        "published",
                        "connect_failures",
                        "no_subscriber",
                    )
                },
            )
            for _ in range(processes)
        ]
        self._workers = [
            mp.Process(
                target=_run,
                args=(accounts[i::processes], options, shared),
                kwargs={
                    "ledger_path": self.ledgers[i],
                    "part": i,
                    "connect_rate": connect_rate / processes,
                },
                name=f"bench-lean-cars-{i}",
                daemon=True,
            )
            for i, shared in enumerate(self._shared)
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def check(self) -> None:
        for worker in self._workers:
            if worker.exitcode not in (None, 0):
                raise RuntimeError(f"{worker.name} died (exit {worker.exitcode})")

    def set_offline(self, offline: bool) -> None:
        self._offline.value = 1 if offline else 0

    def _sum(self, name: str) -> int:
        return sum(int(getattr(shared, name).value) for shared in self._shared)

    @property
    def connected(self) -> int:
        return self._sum("connected")

    @property
    def queued(self) -> int:
        return self._sum("queued")

    @property
    def queued_online(self) -> int:
        """Samples queued (or in flight) in connected cars."""
        return self._sum("queued_online")

    @property
    def acked(self) -> int:
        return self._sum("acked")

    @property
    def connect_failures(self) -> int:
        return self._sum("connect_failures")

    @property
    def no_subscriber(self) -> int:
        return self._sum("no_subscriber")

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout_s)
            if worker.is_alive():
                worker.kill()
                worker.join()


class _Worker:
    """One process's cars and its event loop."""

    def __init__(
        self,
        cars: list[_Car],
        options: LeanFleetOptions,
        shared: _Shared,
        *,
        ledger: Any,
        live: Any,
        connect_rate: float,
    ) -> None:
        self.cars = cars
        self.live = live
        self.options = options
        self.shared = shared
        self.ledger = ledger
        self.selector = selectors.DefaultSelector()
        self.rng = random.Random(options.seed)  # jitter, not security
        self.offline = False
        self.connected = 0
        self.queued = 0
        now = time.monotonic()
        # Sampling schedule: (next sample time, car index), spread over each car's interval.
        self.schedule = [(now + self.rng.uniform(0, car.interval), i) for i, car in enumerate(cars)]
        heapq.heapify(self.schedule)
        self.connecting: set[int] = set(range(len(cars)))
        for car in cars:  # the first connect is paced; the storm later is not
            car.retry_at = now + car.index / connect_rate
        self.draining: set[int] = set()  # connected cars with queued samples
        self.next_connect_check = now
        self.next_ping = now + _KEEPALIVE_S / 2
        self.lines: list[str] = []
        self.live_lines: list[str] = []  # the same, for samples sent live

    # -- connections ----------------------------------------------------------------------

    def _open(self, index: int, now: float) -> None:
        car = self.cars[index]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((car.account.host, car.account.port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            self._failed(car, now)
            return
        car.sock = sock
        car.out = _connect_packet(car.account.username, car.account.password)
        car.buffer = b""
        car.connack_by = now + _CONNACK_TIMEOUT_S
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)

    def _drop(self, car: _Car) -> None:
        """Lose the connection abruptly; what was in flight goes back to the queue front."""
        if car.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(car.sock)
            try:
                car.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                car.sock.close()
            except OSError:
                pass
            car.sock = None
        if car.connected:
            car.connected = False
            self.connected -= 1
        self.draining.discard(car.index)
        car.live_ids.clear()
        for packet_id in sorted(car.inflight, reverse=True):
            samples = car.inflight.pop(packet_id)
            car.queue.extendleft(reversed(samples))
            self.queued += len(samples)
        car.out = b""

    def _failed(self, car: _Car, now: float) -> None:
        self.shared.connect_failures.value += 1
        car.retry_at = now + self.rng.uniform(car.backoff / 2, car.backoff)
        car.backoff = min(car.backoff * 2, _BACKOFF_MAX_S)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        shared = self.shared
        next_stats = 0.0
        while not shared.stop.is_set():
            now = time.monotonic()
            offline = bool(shared.offline.value)
            if offline != self.offline:
                self._switch(offline, now)
            self._sample(now)
            if not self.offline:
                self._connect_due(now)
                self._drain(now)
            self._io(now)
            if now >= self.next_ping:
                for car in self.cars:
                    if car.connected:
                        car.out += _PINGREQ
                        self._flush(car, now)
                self.next_ping = now + _KEEPALIVE_S / 2
            if now >= next_stats:
                shared.connected.value = self.connected
                shared.queued.value = self.queued
                shared.queued_online.value = sum(
                    len(self.cars[i].queue) + len(self.cars[i].inflight) for i in self.draining
                )
                self._write_ledger()
                next_stats = now + 0.2
        self._write_ledger()
        for car in self.cars:
            self._drop(car)

    def _switch(self, offline: bool, now: float) -> None:
        self.offline = offline
        if offline:
            for car in self.cars:
                self._drop(car)
            self.connecting = set(range(len(self.cars)))
        else:
            for car in self.cars:  # everybody back at the same moment: the storm
                car.retry_at, car.backoff = now, _BACKOFF_MIN_S

    def _sample(self, now: float) -> None:
        schedule = self.schedule
        ts = time.time_ns() // 1_000_000
        while schedule and schedule[0][0] <= now:
            due, index = heapq.heappop(schedule)
            car = self.cars[index]
            heapq.heappush(schedule, (due + car.interval, index))
            car.seq += 1
            sample = (car.seq, ts, _sample(car.seq, ts, car.driving))
            if car.connected:
                self._send(car, [sample], now, live=True)  # one per message, beside any backlog
            else:
                car.queue.append(sample)
                self.queued += 1

    def _connect_due(self, now: float) -> None:
        if not self.connecting or now < self.next_connect_check:
            return
        self.next_connect_check = now + 0.02
        for index in list(self.connecting):
            car = self.cars[index]
            if car.sock is None and car.retry_at <= now:
                self._open(index, now)
            elif car.sock is not None and not car.connected and now > car.connack_by:
                self._drop(car)
                self._failed(car, now)

    def _drain(self, now: float) -> None:
        options = self.options
        gap = 1.0 / options.drain_msgs_per_s
        for index in list(self.draining):
            car = self.cars[index]
            if not car.queue:
                self.draining.discard(index)
                continue
            if len(car.inflight) >= options.window or now - car.last_drain < gap:
                continue
            car.last_drain = now
            batch = [car.queue.popleft() for _ in range(min(options.batch, len(car.queue)))]
            self.queued -= len(batch)
            self._send(car, batch, now)

    def _send(
        self, car: _Car, samples: list[tuple[int, int, str]], now: float, *, live: bool = False
    ) -> None:
        packet_id = car.next_id
        car.next_id = car.next_id % 65535 + 1
        car.inflight[packet_id] = samples
        if live:
            car.live_ids.add(packet_id)
        payload = _message(car.vin, car.boot_id, [s[2] for s in samples])
        car.out += _publish(car.topic, packet_id, payload)
        self.shared.published.value += 1
        self._flush(car, now)

    def _flush(self, car: _Car, now: float) -> None:
        if car.sock is None or not car.out:
            return
        try:
            sent = car.sock.send(car.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(car)
            self._failed(car, now)
            return
        car.out = car.out[sent:]
        if car.out and car.connected:
            self.selector.modify(car.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, car.index)

    def _io(self, now: float) -> None:
        for key, events in self.selector.select(_TICK_S):
            index: int = key.data
            car = self.cars[index]
            if car.sock is None:
                continue
            if events & selectors.EVENT_WRITE:
                self._flush(car, now)
                if not car.out and car.sock is not None:
                    self.selector.modify(car.sock, selectors.EVENT_READ, index)
            if events & selectors.EVENT_READ and car.sock is not None:
                try:
                    data = car.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    was_connected = car.connected
                    self._drop(car)
                    if not was_connected:
                        self._failed(car, now)
                    else:
                        car.retry_at = now + self.rng.uniform(0.25, 0.5)
                        self.connecting.add(index)
                    continue
                self._packets(index, car, data, now)

    def _packets(self, index: int, car: _Car, data: bytes, now: float) -> None:
        buffer = car.buffer + data
        pos = 0
        while pos + 2 <= len(buffer):
            kind = buffer[pos] & 0xF0
            length, shift, head = 0, 0, 1
            while True:
                if pos + head >= len(buffer):
                    car.buffer = buffer[pos:]
                    return
                byte = buffer[pos + head]
                length |= (byte & 0x7F) << shift
                shift += 7
                head += 1
                if not byte & 0x80:
                    break
            if pos + head + length > len(buffer):
                break
            body = buffer[pos + head : pos + head + length]
            pos += head + length
            if not self._on_packet(index, car, kind, body, now):
                return
        car.buffer = buffer[pos:]

    def _on_packet(self, index: int, car: _Car, kind: int, body: bytes, now: float) -> bool:
        """Handle one packet from the broker; False once the connection is gone."""
        if kind == 0x20:  # CONNACK
            if len(body) < 2 or body[1] != 0:
                self._drop(car)
                self._failed(car, now)
                return False
            car.connected = True
            self.connected += 1
            self.connecting.discard(index)
            car.backoff = _BACKOFF_MIN_S
            if car.queue:
                self.draining.add(index)
        elif kind == 0x40:  # PUBACK
            packet_id = int.from_bytes(body[:2], "big")
            samples = car.inflight.pop(packet_id, None)
            reason = body[2] if len(body) >= 3 else 0
            if samples is None:
                return True
            live = packet_id in car.live_ids
            car.live_ids.discard(packet_id)
            if reason == 0x10:  # nobody subscribed: keep them, as protocol v1 says
                self.shared.no_subscriber.value += 1
                car.queue.extendleft(reversed(samples))
                self.queued += len(samples)
                self.draining.add(index)
            elif reason < 0x80:
                self.shared.acked.value += len(samples)
                vin, boot = car.vin, car.boot_id
                self.lines += [f"{vin},{boot},{seq},s,{ts}\n" for seq, ts, _ in samples]
                if live:
                    self.live_lines += [f"{vin},{boot},{seq},s,{ts}\n" for seq, ts, _ in samples]
        elif kind == 0xE0:  # DISCONNECT from the broker
            self._drop(car)
            self._failed(car, now)
            self.connecting.add(index)
            return False
        return True

    def _write_ledger(self) -> None:
        if self.lines:
            self.ledger.write("".join(self.lines))
            self.ledger.flush()
            self.lines.clear()
        if self.live_lines:
            self.live.write("".join(self.live_lines))
            self.live.flush()
            self.live_lines.clear()


def _run(
    accounts: list[BrokerAccount],
    options: LeanFleetOptions,
    shared: _Shared,
    *,
    ledger_path: Path,
    part: int,
    connect_rate: float,
) -> None:
    rng = random.Random(f"{options.seed}:{part}")  # simulation
    cars = [_Car(i, account, rng, options) for i, account in enumerate(accounts)]
    live_path = ledger_path.with_name(ledger_path.name.replace("ledger", "live"))
    with ledger_path.open("w", encoding="ascii") as ledger, live_path.open("w") as live:
        worker = _Worker(cars, options, shared, ledger=ledger, live=live, connect_rate=connect_rate)
        worker.run()
    os._exit(0)  # sockets are closed; skip the interpreter's slow teardown of 10,000 objects
