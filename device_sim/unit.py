"""The in-car telematics unit: CAN frames in, MQTT 5 out, commands back onto the bus.

Composition (one unit per car):

    bus --frame--> FrameDecoder --Decoded--> SignalTracker --events--+
                                                  |                  |
                                       sampling policy --samples--> VehicleOutbox (SQLite)
                                                                     |
             MQTT session: birth, live sender, backlog drain <-------+
                           commands --> CommandGate --> CommandExecutor --frame--> bus

Every sample and event takes the next number of one per-boot sequence. Everything goes
through the outbox and leaves it only on PUBACK (QoS 1). While disconnected, rows just
wait there; after reconnecting, the backlog (rows older than the new session) drains
oldest first in batched telemetry messages, while live rows are published at once.

Long-running loops are named tasks in a TaskGroup; `stop()` ends the unit in order:
in-flight publishes are given a moment, the retained offline status is published, then
the unit disconnects cleanly (so the broker discards its last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt
import can
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from device_sim.canbus import FrameBus
from device_sim.codec import DecodeCounters, FrameDecoder
from device_sim.commands import (
    CommandExecutor,
    CommandGate,
    CommandVerifier,
    Rejection,
    StructureOnlyVerifier,
    UnreadableCommand,
    parse_command,
)
from device_sim.errors import BrokerError, OutboxError
from device_sim.ledger import Ledger, NullLedger
from device_sim.outbox import OutboxKind, OutboxRecord, VehicleOutbox
from device_sim.profiles import SignalProfile
from device_sim.settings import MqttSettings, UnitSettings
from device_sim.tracker import EventDraft, SignalTracker, TrackerThresholds
from schemas.commands import (
    CommandMessage,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Precondition,
)
from schemas.events import BacklogOverflowEvent
from schemas.limits import MAX_PAYLOAD_BYTES
from schemas.status import StatusMessage, StatusReason
from schemas.telemetry import TelemetryMessage, TelemetrySample
from schemas.topics import TopicError, TopicKind, command_topic, parse_topic, vehicle_topic

__all__ = ["Clock", "SystemClock", "TelematicsUnit", "UnitCounters", "UnitFaults"]

_log = structlog.get_logger(__name__)

FIRMWARE = "tgw-device-sim/0.1"
# Room for the envelope ({"v":1,"vin":...,"boot_id":...,"samples":[...]}) in a batch.
_ENVELOPE_BYTES = 256
_GOODBYE_S = 5.0
_MAX_CORRELATION_BYTES = 256


class Clock(Protocol):
    """The car's clock (skewed in fault injection)."""

    def now_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The host's clock, optionally off by `offset_ms` (a car whose clock is wrong)."""

    offset_ms: int = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


@dataclass(slots=True)
class UnitFaults:
    """Fault injection for the fleet (all off by default).

    Args:
        duplicate_share: share of uplink messages published twice.
        malformed_share: share of telemetry publishes followed by a malformed payload.
        rng: the random source (seeded per car for determinism).
    """

    duplicate_share: float = 0.0
    malformed_share: float = 0.0
    rng: random.Random = field(default_factory=random.Random)


@dataclass(slots=True)
class UnitCounters:
    """What a unit did; the fleet sums them for its summary."""

    samples: int = 0
    events: int = 0
    messages_published: int = 0  # MQTT messages acknowledged (a batch counts once)
    rows_acknowledged: int = 0  # samples, events and results acknowledged
    backlog_messages: int = 0
    sessions: int = 0
    connect_failures: int = 0
    commands_received: int = 0
    commands_rejected: int = 0
    commands_executed: int = 0
    commands_failed: int = 0
    commands_unanswerable: int = 0
    duplicates_sent: int = 0
    malformed_sent: int = 0
    corrupt_rows: int = 0


@dataclass(slots=True)
class _Live:
    record: OutboxRecord
    model: TelemetrySample | None = None  # kept for live samples: no re-parse


class _Stopped(Exception):  # noqa: N818  (a signal between our own tasks, not an error)
    """The unit was asked to stop; ends the session's task group."""


class TelematicsUnit:
    """One car's telematics unit.

    Args:
        vin: the car's VIN, also its broker username and client id.
        password: its broker password.
        profile: the vehicle model (what the CAN frames mean).
        bus: the car's CAN bus.
        outbox: its store-and-forward queue (and command memory).
        mqtt: broker address and timing.
        settings: publishing and command behaviour.
        ledger: records what the broker acknowledged (fleet fault suite).
        verifier: command signature check; the default checks structure only.
        clock: the car's clock.
        faults: fault injection (fleet).
    """

    def __init__(
        self,
        *,
        vin: str,
        password: str | None,
        profile: SignalProfile,
        bus: FrameBus,
        outbox: VehicleOutbox,
        mqtt: MqttSettings,
        settings: UnitSettings,
        ledger: Ledger | None = None,
        verifier: CommandVerifier | None = None,
        clock: Clock | None = None,
        faults: UnitFaults | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.vin = vin
        self.profile = profile
        self.boot_id = uuid.uuid4().hex
        self.counters = UnitCounters()
        self.connected = asyncio.Event()
        self._password = password
        self._bus = bus
        self._outbox = outbox
        self._mqtt = mqtt
        self._settings = settings
        self._ledger = ledger or NullLedger()
        self._clock = clock or SystemClock()
        self._faults = faults or UnitFaults()
        self._rng = rng or random.Random()  # noqa: S311  (reconnect jitter, not security)
        self._decoder = FrameDecoder(profile)
        self.tracker = SignalTracker(
            TrackerThresholds(
                low_fuel_pct=settings.low_fuel_pct,
                low_fuel_rearm_pct=min(100.0, settings.low_fuel_pct + 5),
                low_voltage_v=settings.low_voltage_v,
                low_voltage_rearm_v=settings.low_voltage_v + 0.4,
            )
        )
        self._gate = CommandGate(
            vin=vin,
            capabilities=profile.capabilities,
            verifier=verifier or StructureOnlyVerifier(),
            memory=outbox,
        )
        self._executor = CommandExecutor(
            profile, bus, self.tracker, confirm_timeout_s=settings.confirm_timeout_s
        )
        self._seq = itertools.count()
        self._topics = {kind: vehicle_topic(vin, kind) for kind in TopicKind}
        self._live: deque[_Live] = deque()
        self._live_ready = asyncio.Event()
        self._session_open = False
        self._state_wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._offline_until = 0.0
        self._busy = False
        self._inflight = 0  # publishes awaiting their PUBACK
        self._quiet = asyncio.Event()  # set when a publish finishes with nothing else pending
        self._tasks: asyncio.TaskGroup | None = None
        self._client: aiomqtt.Client | None = None
        self._log = _log.bind(vin=vin)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; reconnects with jittered backoff whenever the broker is lost."""
        self._bus.add_listener(self._on_frame)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                sampler = tasks.create_task(self._sampling_loop(), name=f"sampler:{self.vin}")
                await self._connection_loop()
                sampler.cancel()
        finally:
            self._tasks = None
            self._bus.remove_listener(self._on_frame)

    def stop(self) -> None:
        """Ask the unit to shut down in order (idempotent)."""
        self._stopping.set()

    def drop_connection(self, *, offline_s: float = 0.0) -> None:
        """Fault injection: lose the connection abruptly (the broker publishes the last will),
        and stay offline for `offline_s` seconds (a dead zone, e.g. an underground car park)."""
        self._offline_until = max(
            self._offline_until, asyncio.get_running_loop().time() + offline_s
        )
        client = self._client
        # aiomqtt has no abrupt close; shutting the socket down is what a dead zone does to it.
        paho = getattr(client, "_client", None)
        sock = paho.socket() if paho is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- CAN side -----------------------------------------------------------------------------

    def _on_frame(self, frame: can.Message) -> None:
        decoded = self._decoder.decode(frame)
        if decoded is None:
            return
        now_ms = self._clock.now_ms()
        tracker = self.tracker
        first = not tracker.values
        was_moving = tracker.moving
        for draft in tracker.apply(decoded, now_ms):
            self._emit_event(draft, now_ms)
        if first or tracker.state_changed or tracker.moving != was_moving:
            self._state_wakeup.set()

    @property
    def decode_counters(self) -> DecodeCounters:
        return self._decoder.counters

    @property
    def queued(self) -> int:
        """Rows in this car's queue, waiting for the broker's acknowledgement."""
        return self._outbox.size

    @property
    def overflow_dropped(self) -> int:
        """Rows this car's queue has dropped (full) since it was created."""
        return self._outbox.dropped_total

    # -- producing rows -----------------------------------------------------------------------

    def _emit_event(self, draft: EventDraft, now_ms: int) -> None:
        seq = next(self._seq)
        event = draft.build(vin=self.vin, boot_id=self.boot_id, seq=seq, ts=now_ms)
        body = event.model_dump_json(exclude_none=True)
        self._append(OutboxKind.EVENT, seq=seq, ts=now_ms, body=body)
        self.counters.events += 1

    def emit_sample(self) -> bool:
        """Queue a sample of every known signal now; False if nothing is known yet."""
        signals = self.tracker.snapshot()
        if signals is None:
            return False
        now_ms = self._clock.now_ms()
        seq = next(self._seq)
        sample = TelemetrySample(seq=seq, ts=now_ms, signals=signals)
        body = sample.model_dump_json(exclude_none=True)
        self._append(OutboxKind.SAMPLE, seq=seq, ts=now_ms, body=body, model=sample)
        self.counters.samples += 1
        self.tracker.state_changed = False
        return True

    def _append(
        self,
        kind: OutboxKind,
        *,
        seq: int | None,
        ts: int,
        body: str,
        model: TelemetrySample | None = None,
        topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        record = self._outbox.append(
            kind,
            boot_id=self.boot_id,
            seq=seq,
            ts=ts,
            body=body,
            topic=topic,
            correlation=correlation,
        )
        if self._session_open:
            self._live.append(_Live(record, model))
            self._live_ready.set()

    async def _sampling_loop(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self._settings
        last = -float("inf")
        while True:
            tracker = self.tracker
            interval = settings.driving_interval_s if tracker.moving else settings.parked_interval_s
            wanted = settings.min_interval_s if tracker.state_changed else interval
            timeout = max(0.0, last + wanted - loop.time())
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._state_wakeup.wait()
                self._state_wakeup.clear()
                continue
            if self.emit_sample():
                last = loop.time()
            else:
                # Nothing decoded yet: wait for the first frames, then a moment for the rest.
                await self._state_wakeup.wait()
                self._state_wakeup.clear()
                await asyncio.sleep(settings.min_interval_s)

    # -- MQTT side ----------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        mqtt = self._mqtt
        backoff = mqtt.reconnect_initial_s
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            offline = self._offline_until - loop.time()
            if offline > 0:
                await self._sleep_unless_stopping(offline)
                continue
            try:
                await self._run_session()
                backoff = mqtt.reconnect_initial_s
            except BrokerError as exc:
                self.counters.connect_failures += 1
                self._log.info("broker_unavailable", error=str(exc), retry_in_s=round(backoff, 2))
            if self._stopping.is_set():
                break
            await self._sleep_unless_stopping(self._rng.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, mqtt.reconnect_max_s)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _status(self, online: bool, reason: StatusReason, ts: int) -> str:
        status = StatusMessage(
            v=1,
            vin=self.vin,
            online=online,
            reason=reason,
            ts=ts,
            boot_id=self.boot_id,
            model=self.profile.name,
            firmware=FIRMWARE,
            capabilities=self.profile.capabilities if online else None,
        )
        return status.model_dump_json(exclude_none=True)

    def _new_client(self) -> aiomqtt.Client:
        mqtt = self._mqtt
        connect_properties = _properties(PacketTypes.CONNECT)
        connect_properties.SessionExpiryInterval = mqtt.session_expiry_s
        will = aiomqtt.Will(
            topic=self._topics[TopicKind.STATUS],
            payload=self._status(False, StatusReason.CONNECTION_LOST, self._clock.now_ms()),
            qos=1,
            retain=True,
        )
        tls_params = (
            aiomqtt.TLSParameters(ca_certs=str(mqtt.tls_ca_file)) if mqtt.tls_ca_file else None
        )
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=self.vin,
            password=self._password,
            identifier=self.vin,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            clean_start=False,  # keep the session: commands queued while away still arrive
            properties=connect_properties,
            keepalive=mqtt.keepalive_s,
            timeout=mqtt.timeout_s,
            max_inflight_messages=mqtt.max_inflight,
            tls_params=tls_params,
        )

    async def _run_session(self) -> None:
        client = self._new_client()
        try:
            async with client:
                self._client = client
                await self._session(client)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"{self._mqtt.host}:{self._mqtt.port}: {exc}") from exc
        except BaseExceptionGroup as group:
            mqtt_errors, rest = group.split(aiomqtt.MqttError)
            if rest is not None:
                raise rest from None
            assert mqtt_errors is not None
            first = mqtt_errors.exceptions[0]
            raise BrokerError(f"{self._mqtt.host}:{self._mqtt.port}: {first}") from group
        finally:
            self._client = None
            self._session_open = False
            self._live.clear()
            self.connected.clear()

    async def _session(self, client: aiomqtt.Client) -> None:
        outbox = self._outbox
        # Rows up to here are backlog; rows appended from now on are live (no await between).
        live_from = outbox.last_id() + 1
        self._session_open = True
        self._live.clear()
        await client.publish(
            self._topics[TopicKind.STATUS],
            self._status(True, StatusReason.CONNECTED, self._clock.now_ms()),
            qos=1,
            retain=True,
        )
        await client.subscribe(command_topic(self.vin), qos=1)
        self.counters.sessions += 1
        self._report_overflow()
        self._log.info("connected", backlog=outbox.size, session=self.counters.sessions)
        self.connected.set()
        inflight = asyncio.Semaphore(self._mqtt.max_inflight)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(client), name=f"receive:{self.vin}")
                tasks.create_task(self._send_live(client, tasks, inflight), name=f"live:{self.vin}")
                tasks.create_task(
                    self._drain_backlog(client, tasks, live_from), name=f"backlog:{self.vin}"
                )
                tasks.create_task(self._until_stopped(client, inflight), name=f"stop:{self.vin}")
        except* _Stopped:
            pass  # an orderly stop: the offline status is out, now disconnect

    def _report_overflow(self) -> None:
        report = self._outbox.take_overflow_report()
        if report is None:
            return
        seq = next(self._seq)
        now_ms = self._clock.now_ms()
        event = BacklogOverflowEvent(
            v=1,
            vin=self.vin,
            boot_id=self.boot_id,
            seq=seq,
            ts=now_ms,
            type="backlog_overflow",
            dropped=report.dropped,
            oldest_dropped_ts=report.oldest_dropped_ts,
        )
        self._append(OutboxKind.EVENT, seq=seq, ts=now_ms, body=event.model_dump_json())
        self.counters.events += 1
        self._log.warning("backlog_overflow_reported", dropped=report.dropped)

    async def _until_stopped(self, client: aiomqtt.Client, inflight: asyncio.Semaphore) -> None:
        await self._stopping.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _GOODBYE_S
        # Give live rows and in-flight publishes a moment; what is left stays queued on disk.
        while self._live or self._inflight:
            self._quiet.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), remaining)
        await client.publish(
            self._topics[TopicKind.STATUS],
            self._status(False, StatusReason.DISCONNECTED, self._clock.now_ms()),
            qos=1,
            retain=True,
        )
        self._log.info("disconnecting", queued=self._outbox.size)
        raise _Stopped

    async def _send_live(
        self, client: aiomqtt.Client, tasks: asyncio.TaskGroup, inflight: asyncio.Semaphore
    ) -> None:
        while True:
            await self._live_ready.wait()
            self._live_ready.clear()
            while self._live:
                batch = self._take_live_batch()
                await inflight.acquire()
                tasks.create_task(
                    self._publish(client, batch, inflight), name=f"publish:{self.vin}"
                )

    def _take_live_batch(self) -> list[_Live]:
        first = self._live.popleft()
        batch = [first]
        if first.record.kind is not OutboxKind.SAMPLE:
            return batch
        size = len(first.record.body)
        limit = self._settings.backlog_batch
        while self._live and len(batch) < limit:
            item = self._live[0]
            record = item.record
            if record.kind is not OutboxKind.SAMPLE or record.boot_id != first.record.boot_id:
                break
            size += len(record.body) + 1
            if size > MAX_PAYLOAD_BYTES - _ENVELOPE_BYTES:
                break
            batch.append(self._live.popleft())
        return batch

    async def _drain_backlog(
        self, client: aiomqtt.Client, tasks: asyncio.TaskGroup, live_from: int
    ) -> None:
        settings = self._settings
        window = asyncio.Semaphore(settings.backlog_window)
        interval = 1.0 / settings.backlog_msgs_per_s
        cursor = 0
        drained = 0
        while True:
            records = self._outbox.backlog(
                after_id=cursor, before_id=live_from, limit=settings.backlog_batch
            )
            if not records:
                break
            for batch in self._backlog_batches(records):
                await window.acquire()
                tasks.create_task(
                    self._publish(client, batch, window, backlog=True), name=f"drain:{self.vin}"
                )
                cursor = batch[-1].record.id
                drained += 1
                await asyncio.sleep(interval)
        if drained:
            self._log.info("backlog_drained", messages=drained)

    def _backlog_batches(self, records: list[OutboxRecord]) -> Iterable[list[_Live]]:
        batch: list[_Live] = []
        size = 0
        limit = self._settings.backlog_batch
        for record in records:
            if record.kind is not OutboxKind.SAMPLE:
                if batch:
                    yield batch
                    batch, size = [], 0
                yield [_Live(record)]
                continue
            too_big = size + len(record.body) + 1 > MAX_PAYLOAD_BYTES - _ENVELOPE_BYTES
            if batch and (
                record.boot_id != batch[0].record.boot_id or len(batch) >= limit or too_big
            ):
                yield batch
                batch, size = [], 0
            batch.append(_Live(record))
            size += len(record.body) + 1
        if batch:
            yield batch

    def _encode(self, batch: list[_Live]) -> tuple[str, str, Properties | None] | None:
        first = batch[0].record
        if first.kind is OutboxKind.EVENT:
            return self._topics[TopicKind.EVENTS], first.body, None
        if first.kind is OutboxKind.RESULT:
            properties = None
            if first.correlation is not None:
                properties = _properties(PacketTypes.PUBLISH)
                properties.CorrelationData = first.correlation
            return first.topic or self._topics[TopicKind.COMMAND_RESULTS], first.body, properties
        samples = []
        for item in batch:
            if item.model is not None:
                samples.append(item.model)
                continue
            try:
                samples.append(TelemetrySample.model_validate_json(item.record.body))
            except ValidationError:
                # A row damaged on disk: it cannot be sent, and must not block the queue.
                self.counters.corrupt_rows += 1
                self._log.warning("outbox_row_corrupt", record_id=item.record.id)
        if not samples:
            return None
        message = TelemetryMessage(v=1, vin=self.vin, boot_id=first.boot_id, samples=tuple(samples))
        return self._topics[TopicKind.TELEMETRY], message.model_dump_json(exclude_none=True), None

    async def _publish(
        self,
        client: aiomqtt.Client,
        batch: list[_Live],
        slots: asyncio.Semaphore,
        *,
        backlog: bool = False,
    ) -> None:
        self._inflight += 1
        try:
            encoded = self._encode(batch)
            if encoded is not None:
                topic, payload, properties = encoded
                await client.publish(topic, payload, qos=1, properties=properties)
                await self._inject_faults(client, topic, payload, properties)
        finally:
            self._inflight -= 1
            slots.release()
            if not self._inflight and not self._live:
                self._quiet.set()
        # Acknowledged (or unsendable): the rows leave the queue, the ledger notes them once.
        records = [item.record for item in batch]
        self._outbox.acknowledge([record.id for record in records])
        counters = self.counters
        counters.messages_published += 1
        counters.rows_acknowledged += len(records)
        if backlog:
            counters.backlog_messages += 1
        if encoded is None:
            return
        for record in records:
            if record.seq is not None:
                kind = "s" if record.kind is OutboxKind.SAMPLE else "e"
                self._ledger.record(self.vin, record.boot_id, record.seq, kind, record.ts)

    async def _inject_faults(
        self, client: aiomqtt.Client, topic: str, payload: str, properties: Properties | None
    ) -> None:
        faults = self._faults
        if faults.duplicate_share and faults.rng.random() < faults.duplicate_share:
            await client.publish(topic, payload, qos=1, properties=properties)
            self.counters.duplicates_sent += 1
        if (
            faults.malformed_share
            and topic == self._topics[TopicKind.TELEMETRY]
            and faults.rng.random() < faults.malformed_share
        ):
            garbage = payload[: max(1, len(payload) // 2)]  # truncated JSON
            await client.publish(topic, garbage, qos=1)
            self.counters.malformed_sent += 1

    # -- commands -----------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        own_commands = command_topic(self.vin)
        async for message in client.messages:
            if message.topic.value != own_commands:
                continue
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, bytes | bytearray):
                payload = b""
            properties = message.properties
            response_topic = getattr(properties, "ResponseTopic", None)
            correlation = getattr(properties, "CorrelationData", None)
            tasks = self._tasks
            if tasks is None:
                return
            # Commands run in the unit's task group: a lost session must not cut one short.
            tasks.create_task(
                self._handle_command(bytes(payload), response_topic, correlation),
                name=f"command:{self.vin}",
            )

    async def _handle_command(
        self, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        counters = self.counters
        counters.commands_received += 1
        topic = self._result_topic(response_topic)
        if correlation is not None:
            correlation = bytes(correlation[:_MAX_CORRELATION_BYTES])
        parsed = parse_command(payload)
        if isinstance(parsed, UnreadableCommand):
            if parsed.command_id is None:
                counters.commands_unanswerable += 1
                self._log.warning("command_unreadable", detail=parsed.detail)
                return
            self._reply(
                parsed.command_id,
                CommandOutcome.REJECTED,
                topic,
                correlation,
                rejection=Rejection(CommandReason.MALFORMED, detail=parsed.detail),
            )
            counters.commands_rejected += 1
            return
        command = parsed
        log = self._log.bind(command_id=str(command.command_id), action=command.action.value)
        rejection = self._gate.check(
            command, now_ms=self._clock.now_ms(), busy=self._busy, values=self.tracker.values
        )
        if rejection is not None:
            counters.commands_rejected += 1
            log.info("command_rejected", reason=rejection.reason.value)
            self._reply(
                command.command_id, CommandOutcome.REJECTED, topic, correlation, rejection=rejection
            )
            return
        try:
            self._gate.take(command)
        except OutboxError as exc:
            # Without durable memory the car could run it twice: refuse rather than risk it.
            log.exception("command_memory_failed", error=str(exc))
            self._reply(
                command.command_id,
                CommandOutcome.REJECTED,
                topic,
                correlation,
                rejection=Rejection(CommandReason.BUSY, detail="command memory unavailable"),
            )
            return
        self._busy = True
        try:
            self._reply(command.command_id, CommandOutcome.ACCEPTED, topic, correlation)
            await self._execute(command, topic, correlation, log)
        finally:
            self._busy = False

    async def _execute(
        self,
        command: CommandMessage,
        topic: str,
        correlation: bytes | None,
        log: Any,
    ) -> None:
        result = await self._executor.execute(command)
        if result.reason is None:
            self.counters.commands_executed += 1
            log.info("command_executed")
            self._reply(
                command.command_id,
                CommandOutcome.EXECUTED,
                topic,
                correlation,
                state=self.tracker.snapshot(),
            )
        else:
            self.counters.commands_failed += 1
            log.warning("command_failed", reason=result.reason.value, detail=result.detail)
            self._reply(
                command.command_id,
                CommandOutcome.FAILED,
                topic,
                correlation,
                failure=(result.reason, result.detail),
                state=self.tracker.snapshot(),
            )

    def _result_topic(self, response_topic: str | None) -> str:
        """The command's MQTT 5 response topic if it is this car's results topic, else that topic.

        The broker lets a car publish only to its own topics, so a response topic elsewhere
        would swallow the answer; the car then answers on its own topic and says so in the log.
        """
        default = self._topics[TopicKind.COMMAND_RESULTS]
        if response_topic is None:
            return default
        try:
            parsed = parse_topic(response_topic)
        except TopicError:
            parsed = None
        if (
            parsed is not None
            and parsed.vin == self.vin
            and parsed.kind is TopicKind.COMMAND_RESULTS
        ):
            return response_topic
        self._log.warning("response_topic_ignored", response_topic=response_topic[:200])
        return default

    def _reply(
        self,
        command_id: uuid.UUID,
        outcome: CommandOutcome,
        topic: str,
        correlation: bytes | None,
        *,
        rejection: Rejection | None = None,
        failure: tuple[CommandReason, str | None] | None = None,
        state: Any = None,
    ) -> None:
        reason: CommandReason | None = None
        detail: str | None = None
        failed: tuple[Precondition, ...] = ()
        if rejection is not None:
            reason, detail, failed = (
                rejection.reason,
                rejection.detail,
                rejection.failed_preconditions,
            )
        elif failure is not None:
            reason, detail = failure
        now_ms = self._clock.now_ms()
        result = CommandResultMessage(
            v=1,
            command_id=command_id,
            vin=self.vin,
            ts=now_ms,
            outcome=outcome,
            reason=reason,
            failed_preconditions=failed,
            detail=detail,
            state=state,
        )
        self._append(
            OutboxKind.RESULT,
            seq=None,
            ts=now_ms,
            body=result.model_dump_json(exclude_none=True),
            topic=topic,
            correlation=correlation,
        )


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped
