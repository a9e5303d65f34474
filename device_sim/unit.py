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
import functools
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import can
import structlog
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
from device_sim.errors import BrokerError, CredentialsRefusedError, OutboxError
from device_sim.ledger import Ledger, NullLedger
from device_sim.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    REFUSED,
    InboundMessage,
    MqttLink,
    PublishProperties,
    Will,
)
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
from schemas.telemetry import TelemetrySample
from schemas.topics import TopicError, TopicKind, command_topic, parse_topic, vehicle_topic
from schemas.vin import parse_vin

__all__ = [
    "Clock",
    "SystemClock",
    "TelematicsUnit",
    "UnitCounters",
    "UnitFaults",
    "compose_telemetry",
]

_log = structlog.get_logger(__name__)

FIRMWARE = "tgw-device-sim/0.1"
# Room for the envelope ({"v":1,"vin":...,"boot_id":...,"samples":[...]}) in a batch.
_ENVELOPE_BYTES = 256
_GOODBYE_S = 5.0
# Resend pauses while the broker reports no subscriber for our messages.
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
_MAX_CORRELATION_BYTES = 256
# Executed command ids are kept a week past their deadline (clock corrections included).
_COMMAND_MEMORY_MS = 7 * 24 * 3600 * 1000
# Rejections that are final for a command the car identified: a redelivery gets them again.
_REMEMBERED_REJECTIONS = frozenset(
    {
        CommandReason.EXPIRED,
        CommandReason.REPLAY,
        CommandReason.UNSUPPORTED,
        CommandReason.BUSY,
        CommandReason.PRECONDITION_FAILED,
    }
)


def compose_telemetry(vin: str, boot_id: str, sample_bodies: list[str]) -> str:
    """A TelemetryMessage's JSON from its samples' JSON (each a TelemetrySample dump).

    Byte for byte what `TelemetryMessage(...).model_dump_json(exclude_none=True)` writes
    (a unit test holds it to that), without validating and serialising every sample again:
    the samples were built by the model, and the VIN and boot id are checked at start.
    """
    return f'{{"v":1,"vin":"{vin}","boot_id":"{boot_id}","samples":[{",".join(sample_bodies)}]}}'


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
    commands_repeated: int = 0  # seen before (QoS 1 redelivery): earlier results sent again
    publish_refused: int = 0  # the broker answered PUBACK with an error (e.g. not authorised)
    no_subscriber_retries: int = 0  # PUBACK "no matching subscribers": kept and sent again
    duplicates_sent: int = 0
    malformed_sent: int = 0
    corrupt_rows: int = 0


@dataclass(slots=True)
class _Live:
    record: OutboxRecord
    checked: bool = False  # a live sample, built here a moment ago: no re-parse


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
        rng: random source of the reconnect jitter (seed it for determinism).
        sample_externally: the owner calls `sample_tick` (a fleet); no sampler task.
        connect_slots: a fleet's bound on connection handshakes in progress at once.
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
        sample_externally: bool = False,
        connect_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.vin = parse_vin(vin)
        self.profile = profile
        self.boot_id = uuid.uuid4().hex
        self.counters = UnitCounters()
        self.connected = asyncio.Event()
        # Called at every connect, once the session is set up (a fleet starts the car's life
        # at its first one).
        self.on_connected: Callable[[], None] | None = None
        # During a staged rotation (tgw rotate) the new password first, the old one second: the
        # unit switches when the broker refuses one, so it is never locked out.
        fallback = mqtt.password_fallback.get_secret_value() if mqtt.password_fallback else None
        self._passwords = [password] if fallback is None else [password, fallback]
        self._password_index = 0
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
        self._command_topic = command_topic(vin)
        self._waiting: deque[_Live] = deque()  # live rows waiting for an in-flight slot
        self._session_open = False
        # Which session a row was sent in, counted from the moment rows go out live, not from
        # when the session is counted (after its birth and subscription: two round trips).
        self._session_number = 0
        self._state_wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._offline_until = 0.0
        self._busy = False
        self._sample_externally = sample_externally
        self._connect_slots = connect_slots
        self._first_values_at: float | None = None
        self._last_sample_at: float | None = None
        self._inflight = 0  # live messages awaiting their PUBACK
        self._retry_delay_s = _RETRY_MIN_S  # grows while nobody subscribes; reset by a delivery
        self._connect_ts = 0  # when the current connection was opened (birth and will)
        self._backlog_inflight = 0
        self._backlog_slot = asyncio.Event()
        self._quiet = asyncio.Event()  # set when the last message in flight is acknowledged
        self._tasks: asyncio.TaskGroup | None = None
        self._link: MqttLink | None = None
        self._log = _log.bind(vin=vin)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; reconnects with jittered backoff whenever the broker is lost."""
        self._bus.add_listener(self._on_frame)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                sampler = None
                if not self._sample_externally:
                    sampler = tasks.create_task(self._sampling_loop(), name=f"sampler:{self.vin}")
                await self._connection_loop()
                if sampler is not None:
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
        until = asyncio.get_running_loop().time() + offline_s
        self._offline_until = max(self._offline_until, until)
        if self._link is not None:
            self._link.abort()

    # -- CAN side -----------------------------------------------------------------------------

    def _on_frame(self, frame: can.Message) -> None:
        decoded = self._decoder.decode(frame)
        if decoded is None:
            return
        now_ms = self._clock.now_ms()
        tracker = self.tracker
        first = not tracker.values
        if first:
            self._first_values_at = asyncio.get_running_loop().time()
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
        signals = self.tracker.signals_json()
        if signals is None:
            return False
        now_ms = self._clock.now_ms()
        seq = next(self._seq)
        # What TelemetrySample(...).model_dump_json(exclude_none=True) writes (a unit test holds
        # it to that), from checked parts: the decoder's range-checked values, counter, clock.
        body = f'{{"seq":{seq},"ts":{now_ms},"signals":{signals}}}'
        self._append(OutboxKind.SAMPLE, seq=seq, ts=now_ms, body=body, checked=True)
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
        checked: bool = False,
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
        if not self._session_open:
            return  # queued on disk; the next session's backlog drain sends it
        item = _Live(record, checked)
        if self._waiting or self._inflight >= self._mqtt.max_inflight:
            self._waiting.append(item)
        else:
            self._send([item])

    def sample_tick(self, now: float) -> float:
        """Take a sample if the policy says one is due at loop time `now`.

        Returns the seconds until one may next be due (sooner if the car's state changes).
        A fleet calls this from each car's own loop instead of running a sampler task per car.
        """
        settings = self._settings
        first = self._first_values_at
        if first is None:
            return settings.min_interval_s  # nothing decoded yet
        if self._last_sample_at is None and now < first + settings.min_interval_s:
            return first + settings.min_interval_s - now  # let every ECU speak once first
        tracker = self.tracker
        interval = settings.driving_interval_s if tracker.moving else settings.parked_interval_s
        wanted = settings.min_interval_s if tracker.state_changed else interval
        last = self._last_sample_at
        if last is not None and now < last + wanted:
            return last + wanted - now
        if self.emit_sample():
            self._last_sample_at = now
        return settings.driving_interval_s if tracker.moving else settings.parked_interval_s

    async def _sampling_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self.sample_tick(loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._state_wakeup.wait()
            self._state_wakeup.clear()

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
            except CredentialsRefusedError as exc:
                self.counters.connect_failures += 1
                if len(self._passwords) > 1:
                    self._password_index = (self._password_index + 1) % len(self._passwords)
                    self._log.warning("credentials_refused_trying_other", error=str(exc))
                else:
                    self._log.error("credentials_refused", error=str(exc))
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

    def _new_link(self) -> MqttLink:
        mqtt = self._mqtt
        # Birth and will of one connection carry the same time (protocol 5): the gateway can
        # then tell a late will of an old connection from the loss of the current one.
        self._connect_ts = self._clock.now_ms()
        return MqttLink(
            host=mqtt.host,
            port=mqtt.port,
            client_id=self.vin,
            username=self.vin,
            password=self._passwords[self._password_index],
            on_message=self._on_inbound,
            will=Will(
                self._topics[TopicKind.STATUS],
                self._status(False, StatusReason.CONNECTION_LOST, self._connect_ts),
            ),
            keepalive_s=mqtt.keepalive_s,
            # Keep the session: commands queued while away still arrive (until they expire).
            session_expiry_s=mqtt.session_expiry_s,
            clean_start=False,
            timeout_s=mqtt.timeout_s,
            max_inflight=mqtt.max_inflight,
            tls_ca_file=mqtt.tls_ca_file,
            tls_cert_file=mqtt.tls_cert_file,
            tls_key_file=mqtt.tls_key_file,
            connect_slots=self._connect_slots,
        )

    async def _run_session(self) -> None:
        link = self._new_link()
        try:
            async with link:
                self._link = link
                await self._session(link)
        finally:
            self._link = None
            self._session_open = False
            self._waiting.clear()
            self._inflight = self._backlog_inflight = 0
            self.connected.clear()

    async def _session(self, link: MqttLink) -> None:
        outbox = self._outbox
        # Rows up to here are backlog; rows appended from now on are live (no await between).
        live_from = outbox.last_id() + 1
        self._session_open = True
        self._session_number += 1
        self._waiting.clear()
        self._inflight = self._backlog_inflight = 0
        await link.publish_and_wait(
            self._topics[TopicKind.STATUS],
            self._status(True, StatusReason.CONNECTED, self._connect_ts),
            retain=True,
        )
        await link.subscribe(command_topic(self.vin), qos=1)
        self.counters.sessions += 1
        # A command expired this long ago is refused as expired anyway: its id may go.
        outbox.forget_commands_expired_before(self._clock.now_ms() - _COMMAND_MEMORY_MS)
        self._report_overflow()
        self._log.info("connected", backlog=outbox.size, session=self.counters.sessions)
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()
        drain = asyncio.create_task(self._drain_backlog(live_from), name=f"backlog:{self.vin}")
        stop = asyncio.create_task(self._stopping.wait(), name=f"stop:{self.vin}")
        try:
            await asyncio.wait((link.closed, stop), return_when=asyncio.FIRST_COMPLETED)
            if link.closed.done():
                error = link.closed.exception()
                raise BrokerError(str(error) if error else "the broker closed the connection")
            await self._goodbye(link)
        finally:
            for task in (drain, stop):
                task.cancel()
            await asyncio.gather(drain, stop, return_exceptions=True)

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

    async def _goodbye(self, link: MqttLink) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _GOODBYE_S
        # Give what is in flight a moment; whatever is left stays queued on disk.
        while self._waiting or self._inflight or self._backlog_inflight:
            self._quiet.clear()
            remaining = deadline - loop.time()
            if remaining <= 0 or link.closed.done():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._quiet.wait()
        self._session_open = False
        await link.publish_and_wait(
            self._topics[TopicKind.STATUS],
            self._status(False, StatusReason.DISCONNECTED, self._clock.now_ms()),
            retain=True,
        )
        self._log.info("disconnecting", queued=self._outbox.size)

    def _take_live_batch(self) -> list[_Live]:
        first = self._waiting.popleft()
        batch = [first]
        if first.record.kind is not OutboxKind.SAMPLE:
            return batch
        size = len(first.record.body)
        limit = self._settings.backlog_batch
        while self._waiting and len(batch) < limit:
            record = self._waiting[0].record
            if record.kind is not OutboxKind.SAMPLE or record.boot_id != first.record.boot_id:
                break
            size += len(record.body) + 1
            if size > MAX_PAYLOAD_BYTES - _ENVELOPE_BYTES:
                break
            batch.append(self._waiting.popleft())
        return batch

    async def _drain_backlog(self, live_from: int) -> None:
        settings = self._settings
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
                while self._backlog_inflight >= settings.backlog_window:
                    self._backlog_slot.clear()
                    await self._backlog_slot.wait()
                if not self._send(batch, backlog=True):
                    return  # the session is ending; the next one starts over
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

    def _encode(self, batch: list[_Live]) -> tuple[str, str, PublishProperties | None] | None:
        first = batch[0].record
        if first.kind is OutboxKind.EVENT:
            return self._topics[TopicKind.EVENTS], first.body, None
        if first.kind is OutboxKind.RESULT:
            properties = None
            if first.correlation is not None:
                properties = PublishProperties(correlation_data=first.correlation)
            return first.topic or self._topics[TopicKind.COMMAND_RESULTS], first.body, properties
        bodies = []
        for item in batch:
            if not item.checked:
                try:
                    # Rows from disk are checked before they go out; live rows were built
                    # by the model a moment ago.
                    TelemetrySample.model_validate_json(item.record.body)
                except ValidationError:
                    # A row damaged on disk: it cannot be sent, and must not block the queue.
                    self.counters.corrupt_rows += 1
                    self._log.warning("outbox_row_corrupt", record_id=item.record.id)
                    continue
            bodies.append(item.record.body)
        if not bodies:
            return None
        payload = compose_telemetry(self.vin, first.boot_id, bodies)
        return self._topics[TopicKind.TELEMETRY], payload, None

    def _send(self, batch: list[_Live], *, backlog: bool = False) -> bool:
        """Publish one message for `batch`; False if the connection is gone (rows stay queued)."""
        link = self._link
        if link is None:
            return False
        encoded = self._encode(batch)
        if encoded is None:
            self._done(batch, backlog=backlog, accepted=True, sent=False)
            return True
        topic, payload, properties = encoded
        try:
            link.publish(
                topic,
                payload,
                qos=1,
                properties=properties,
                on_ack=functools.partial(self._acked, batch, backlog),
            )
            self._inject_faults(link, topic, payload, properties)
        except BrokerError:
            return False
        if backlog:
            self._backlog_inflight += 1
        else:
            self._inflight += 1
        return True

    def _acked(self, batch: list[_Live], backlog: bool, reason_code: int) -> None:
        if backlog:
            self._backlog_inflight -= 1
            self._backlog_slot.set()
        else:
            self._inflight -= 1
        if reason_code == NO_MATCHING_SUBSCRIBERS:
            # The broker kept nothing (e.g. it restarted and the gateway has not subscribed
            # again yet): the rows stay queued on disk and go out again after a pause.
            self.counters.no_subscriber_retries += 1
            self._retry_later(batch, backlog)
        else:
            self._retry_delay_s = _RETRY_MIN_S
            self._done(batch, backlog=backlog, accepted=reason_code < REFUSED, sent=True)
        while self._waiting and self._inflight < self._mqtt.max_inflight:
            if not self._send(self._take_live_batch()):
                break
        if not (self._inflight or self._backlog_inflight or self._waiting):
            self._quiet.set()

    def _retry_later(self, batch: list[_Live], backlog: bool) -> None:
        delay = self._retry_delay_s
        self._retry_delay_s = min(delay * 2, _RETRY_MAX_S)
        session = self._session_number
        asyncio.get_running_loop().call_later(delay, self._resend, batch, backlog, session)

    def _resend(self, batch: list[_Live], backlog: bool, session: int) -> None:
        # A later session drains these rows from disk itself: only this session resends them.
        if session == self._session_number and self._session_open:
            self._send(batch, backlog=backlog)

    def _done(self, batch: list[_Live], *, backlog: bool, accepted: bool, sent: bool) -> None:
        # Acknowledged (or unsendable): the rows leave the queue, the ledger notes them once.
        records = [item.record for item in batch]
        self._outbox.acknowledge([record.id for record in records])
        counters = self.counters
        if not accepted:
            # The broker refused it (e.g. not authorised): it would refuse every retry too.
            counters.publish_refused += 1
            self._log.error("publish_refused", rows=len(records), kind=records[0].kind.name)
            return
        if not sent:
            return
        counters.messages_published += 1
        counters.rows_acknowledged += len(records)
        if backlog:
            counters.backlog_messages += 1
        for record in records:
            if record.seq is not None:
                kind = "s" if record.kind is OutboxKind.SAMPLE else "e"
                self._ledger.record(self.vin, record.boot_id, record.seq, kind, record.ts)

    def _inject_faults(
        self, link: MqttLink, topic: str, payload: str, properties: PublishProperties | None
    ) -> None:
        faults = self._faults
        if faults.duplicate_share and faults.rng.random() < faults.duplicate_share:
            link.publish(topic, payload, qos=1, properties=properties)
            self.counters.duplicates_sent += 1
        if (
            faults.malformed_share
            and topic == self._topics[TopicKind.TELEMETRY]
            and faults.rng.random() < faults.malformed_share
        ):
            link.publish(topic, payload[: max(1, len(payload) // 2)], qos=1)  # truncated JSON
            self.counters.malformed_sent += 1

    # -- commands -----------------------------------------------------------------------------

    def _on_inbound(self, message: InboundMessage) -> None:
        tasks = self._tasks
        if message.topic != self._command_topic or tasks is None:
            return
        # Commands run in the unit's task group: a lost session must not cut one short.
        tasks.create_task(
            self._handle_command(message.payload, message.response_topic, message.correlation_data),
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
            if rejection.reason is CommandReason.REPLAY and self._repeat_results(
                command, topic, correlation
            ):
                log.info("command_redelivered")
                return
            counters.commands_rejected += 1
            log.info("command_rejected", reason=rejection.reason.value)
            # A redelivery of this command must get the same answer: remember it (no action).
            remember = rejection.reason in _REMEMBERED_REJECTIONS and self._remember(command, log)
            self._reply(
                command.command_id,
                CommandOutcome.REJECTED,
                topic,
                correlation,
                rejection=rejection,
                remember=remember,
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
            self._reply(
                command.command_id, CommandOutcome.ACCEPTED, topic, correlation, remember=True
            )
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
                remember=True,
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
                remember=True,
            )

    def _repeat_results(
        self, command: CommandMessage, topic: str, correlation: bytes | None
    ) -> bool:
        """A command id seen before (a QoS 1 redelivery, or a replay of a handled command):
        publish again the results sent for it, execute nothing. False if the id is new (its
        nonce was another command's) or nothing was kept for it: then it is a `replay`."""
        try:
            earlier = self._outbox.command_results(str(command.command_id))
        except OutboxError as exc:
            self._log.warning("command_memory_unreadable", error=str(exc))
            return False
        if not earlier:
            return False
        self.counters.commands_repeated += 1
        for body in earlier:
            self._append(
                OutboxKind.RESULT,
                seq=None,
                ts=self._clock.now_ms(),
                body=body,
                topic=topic,
                correlation=correlation,
            )
        return True

    def _remember(self, command: CommandMessage, log: Any) -> bool:
        try:
            self._gate.take(command)
        except OutboxError as exc:
            log.warning("command_memory_failed", error=str(exc))
            return False
        return True

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
        remember: bool = False,
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
        body = result.model_dump_json(exclude_none=True)
        if remember:
            try:
                self._outbox.remember_result(str(command_id), body)
            except OutboxError as exc:
                self._log.warning("command_result_not_remembered", error=str(exc))
        self._append(
            OutboxKind.RESULT,
            seq=None,
            ts=now_ms,
            body=body,
            topic=topic,
            correlation=correlation,
        )
