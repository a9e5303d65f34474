"""Helpers for device_sim integration tests: a gateway stand-in and a car on a virtual CAN bus.

`GatewayProbe` subscribes to cars' uplink with its own gateway account (so it never shares a
session with the real gateway's tests), validates every message with schemas.decode_uplink,
reconnects across broker restarts, and sends commands with MQTT 5 properties.

`running_car` runs one simulated car: ECUs on one virtual bus, the telematics unit on another
(back to back), its queue in the test's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.canbus import PythonCanBus
from device_sim.ecu import BodyBehaviour, SimulatedEcus, VehicleState
from device_sim.outbox import OutboxStore
from device_sim.profiles import load_profile
from device_sim.settings import MqttSettings, UnitSettings
from device_sim.unit import TelematicsUnit
from gateway.devstack import MosquittoBroker
from schemas import (
    Accepted,
    CommandResultMessage,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    command_topic,
    decode_uplink,
)

__all__ = ["CarRig", "GatewayProbe", "running_car", "wait_until"]

DEADLINE_S = 20.0


async def wait_until(
    predicate: Callable[[], object], timeout_s: float = DEADLINE_S, what: str = ""
) -> None:
    """Poll `predicate` (cheap, in-process state) until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho is untyped here


@dataclass
class GatewayProbe:
    """Stands in for the gateway: reads cars' uplink, sends commands."""

    broker: MosquittoBroker
    username: str = field(default_factory=lambda: f"tgw-probe-{secrets.token_hex(4)}")
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    correlations: dict[str, bytes | None] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _client: aiomqtt.Client | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> GatewayProbe:
        self._password = self.broker.add_gateway(self.username)
        self._task = asyncio.create_task(self._run(), name="gateway-probe")
        await asyncio.wait_for(self._connected.wait(), DEADLINE_S)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        connect = _properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 300  # survive a broker restart with our queue
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    username=self.username,
                    password=self._password,
                    identifier=self.username,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=connect,
                ) as client:
                    self._client = client
                    await client.subscribe("tgw/v1/vehicles/#", qos=1)
                    self._connected.set()
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError:
                self._connected.clear()
                self._client = None
                await asyncio.sleep(0.2)

    def _take(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        assert isinstance(payload, bytes | bytearray)
        result = decode_uplink(
            message.topic.value, bytes(payload), received_at_ms=time.time_ns() // 1_000_000
        )
        if isinstance(result, Accepted):
            self.accepted.append(result)
            if isinstance(result.message, CommandResultMessage):
                correlation = getattr(message.properties, "CorrelationData", None)
                self.correlations[str(result.message.command_id)] = correlation
        else:
            self.rejected.append(result)

    # -- views ------------------------------------------------------------------------------

    def of(self, vin: str, kind: type[Any]) -> list[Any]:
        return [
            a.message for a in self.accepted if a.topic.vin == vin and isinstance(a.message, kind)
        ]

    def samples(self, vin: str) -> list[tuple[str, int]]:
        """(boot_id, seq) of every telemetry sample received from `vin`, in arrival order."""
        return [
            (message.boot_id, sample.seq)
            for message in self.of(vin, TelemetryMessage)
            for sample in message.samples
        ]

    def events(self, vin: str) -> list[Any]:
        return [
            a.message
            for a in self.accepted
            if a.topic.vin == vin and a.topic.kind.value == "events"
        ]

    def results(self, vin: str, command_id: uuid.UUID) -> list[CommandResultMessage]:
        return [r for r in self.of(vin, CommandResultMessage) if r.command_id == command_id]

    def statuses(self, vin: str) -> list[StatusMessage]:
        return self.of(vin, StatusMessage)

    # -- commands ---------------------------------------------------------------------------

    async def command(
        self,
        vin: str,
        action: str,
        *,
        ttl_ms: int = 30_000,
        issued_at: int | None = None,
        command_id: uuid.UUID | None = None,
        nonce: str | None = None,
        payload_vin: str | None = None,
        correlation: bytes | None = None,
        raw: bytes | None = None,
    ) -> uuid.UUID:
        """Publish a command (QoS 1, response topic, correlation data, message expiry)."""
        await asyncio.wait_for(self._connected.wait(), DEADLINE_S)
        assert self._client is not None
        command_id = command_id or uuid.uuid4()
        issued = issued_at if issued_at is not None else time.time_ns() // 1_000_000
        document = {
            "v": 1,
            "command_id": str(command_id),
            "vin": payload_vin or vin,
            "action": action,
            "issued_at": issued,
            "expires_at": issued + ttl_ms,
            "nonce": nonce or secrets.token_hex(16),
            "key_id": "probe-1",
            "signature": "bm90LXNpZ25lZA==",
        }
        properties = _properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = f"tgw/v1/vehicles/{vin}/command_results"
        properties.CorrelationData = correlation or command_id.bytes
        left_s = max(1, (issued + ttl_ms - time.time_ns() // 1_000_000) // 1000)
        properties.MessageExpiryInterval = left_s
        payload = raw if raw is not None else json.dumps(document).encode()
        await self._client.publish(command_topic(vin), payload, qos=1, properties=properties)
        return command_id


@dataclass
class CarRig:
    vin: str
    password: str
    state: VehicleState
    ecus: SimulatedEcus
    unit: TelematicsUnit
    queue_file: Path


@contextlib.asynccontextmanager
async def running_car(
    broker: MosquittoBroker,
    queue_file: Path,
    *,
    vin: str,
    password: str,
    profile: str = "tgw_generic",
    settings: UnitSettings | None = None,
    state: VehicleState | None = None,
    body: BodyBehaviour | None = None,
    connect: bool = True,
) -> AsyncIterator[CarRig]:
    """One car (ECUs + unit on back-to-back virtual buses); stopped in order on exit."""
    loaded = load_profile(profile)
    settings = settings or UnitSettings(
        parked_interval_s=0.5, driving_interval_s=0.2, min_interval_s=0.1, confirm_timeout_s=2.0
    )
    mqtt = MqttSettings(
        host=broker.host,
        port=broker.port,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
        timeout_s=5,
    )
    channel = f"test-{vin}-{uuid.uuid4().hex[:6]}"
    state = state or VehicleState()
    async with (
        OutboxStore(queue_file) as store,
        PythonCanBus("virtual", channel) as ecu_bus,
        PythonCanBus("virtual", channel) as unit_bus,
    ):
        ecus = SimulatedEcus(loaded, state, ecu_bus, body=body)
        unit = TelematicsUnit(
            vin=vin,
            password=password,
            profile=loaded,
            bus=unit_bus,
            outbox=store.vehicle(vin, max_records=settings.queue_max_records),
            mqtt=mqtt,
            settings=settings,
        )
        periodic = asyncio.create_task(ecus.run_periodic(), name=f"ecus:{vin}")
        run = asyncio.create_task(unit.run(), name=f"unit:{vin}")
        try:
            if connect:
                await asyncio.wait_for(unit.connected.wait(), DEADLINE_S)
            yield CarRig(vin, password, state, ecus, unit, queue_file)
        finally:
            unit.stop()
            try:
                await asyncio.wait_for(run, DEADLINE_S)
            finally:
                periodic.cancel()
                ecus.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await periodic
