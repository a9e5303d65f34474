"""Commands on the car through a real broker: CAN write, read-back, rejections with reasons."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sim.ecu import BodyBehaviour, VehicleState
from device_sim.settings import UnitSettings
from gateway.devstack import MosquittoBroker, random_vin
from schemas import CommandOutcome, CommandReason, LockEvent, LockSource, Precondition
from tests.integration.device_support import (
    CarRig,
    GatewayProbe,
    running_car,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(mqtt_broker: MosquittoBroker) -> AsyncIterator[GatewayProbe]:
    async with GatewayProbe(mqtt_broker) as probe:
        yield probe


@pytest.fixture
async def car(
    mqtt_broker: MosquittoBroker, tmp_path: Path, gateway: GatewayProbe
) -> AsyncIterator[CarRig]:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    state = VehicleState(locked=True)
    async with running_car(
        mqtt_broker, tmp_path / "q.sqlite", vin=vin, password=password, state=state
    ) as rig:
        await wait_until(lambda: gateway.samples(vin), what="first sample")
        yield rig


async def _final(gateway: GatewayProbe, car: CarRig, command_id: uuid.UUID) -> list[CommandOutcome]:
    finals = {CommandOutcome.REJECTED, CommandOutcome.EXECUTED, CommandOutcome.FAILED}
    await wait_until(
        lambda: any(r.outcome in finals for r in gateway.results(car.vin, command_id)),
        what=f"a final result for {command_id}",
    )
    return [r.outcome for r in gateway.results(car.vin, command_id)]


async def test_unlock_and_lock_are_written_and_read_back(
    gateway: GatewayProbe, car: CarRig
) -> None:
    unlock = await gateway.command(car.vin, "unlock", correlation=b"corr-1")
    assert await _final(gateway, car, unlock) == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED]
    assert car.state.locked is False  # the body ECU model obeyed the CAN frame
    executed = gateway.results(car.vin, unlock)[-1]
    assert executed.state is not None
    assert executed.state.locked is False  # read back from the lock status frame
    assert gateway.correlations[str(unlock)] == b"corr-1"  # MQTT 5 correlation data echoed

    lock = await gateway.command(car.vin, "lock")
    assert await _final(gateway, car, lock) == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED]
    assert car.state.locked is True
    await wait_until(lambda: len(gateway.of(car.vin, LockEvent)) >= 2, what="lock events")
    events = gateway.of(car.vin, LockEvent)
    assert [(e.type, e.source, e.command_id) for e in events[-2:]] == [
        ("unlocked", LockSource.COMMAND, unlock),
        ("locked", LockSource.COMMAND, lock),
    ]
    assert gateway.rejected == []


async def test_lock_with_a_door_open_is_rejected_with_the_reason(
    gateway: GatewayProbe, car: CarRig
) -> None:
    car.state.locked = False
    car.state.door_rl_open = True
    car.state.ignition = True
    car.ecus.send_changed()
    await wait_until(lambda: car.unit.tracker.values.get("ignition") is True, what="ignition on")
    command = await gateway.command(car.vin, "lock")
    assert await _final(gateway, car, command) == [CommandOutcome.REJECTED]
    (result,) = gateway.results(car.vin, command)
    assert result.reason is CommandReason.PRECONDITION_FAILED
    assert result.failed_preconditions == (Precondition.DOORS_CLOSED, Precondition.IGNITION_OFF)
    assert car.state.locked is False  # nothing was written to the bus
    assert car.ecus.requests_seen == 0


async def test_expired_and_replayed_commands_are_rejected(
    gateway: GatewayProbe, car: CarRig
) -> None:
    # Issued long ago with a short life: past its deadline on the car's clock.
    long_ago = time.time_ns() // 1_000_000 - 60_000
    expired = await gateway.command(car.vin, "unlock", issued_at=long_ago, ttl_ms=30_000)
    assert await _final(gateway, car, expired) == [CommandOutcome.REJECTED]
    assert gateway.results(car.vin, expired)[0].reason is CommandReason.EXPIRED

    unlock = await gateway.command(car.vin, "unlock", nonce="ab" * 16)
    assert await _final(gateway, car, unlock) == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED]
    # A new command id that reuses the nonce is a replay: refused, not run.
    car.state.locked = True
    car.ecus.send_changed()
    requests = car.ecus.requests_seen
    reused = await gateway.command(car.vin, "unlock", nonce="ab" * 16)
    assert await _final(gateway, car, reused) == [CommandOutcome.REJECTED]
    assert gateway.results(car.vin, reused)[0].reason is CommandReason.REPLAY
    assert car.ecus.requests_seen == requests
    assert car.state.locked is True


async def test_a_redelivered_command_gets_its_results_again_and_does_not_run_twice(
    gateway: GatewayProbe, car: CarRig
) -> None:
    unlock = await gateway.command(car.vin, "unlock", nonce="cd" * 16, correlation=b"first")
    assert await _final(gateway, car, unlock) == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED]
    first = gateway.results(car.vin, unlock)
    car.state.locked = True
    car.ecus.send_changed()
    await wait_until(lambda: car.unit.tracker.values.get("locked") is True, what="locked again")
    requests = car.ecus.requests_seen
    # The same command again (a QoS 1 redelivery): protocol 9.4 step 4, the earlier results
    # are published again, with the correlation data of the message that asked.
    await gateway.command(
        car.vin, "unlock", command_id=unlock, nonce="cd" * 16, correlation=b"again"
    )
    await wait_until(lambda: len(gateway.results(car.vin, unlock)) >= 4, what="repeated results")
    again = gateway.results(car.vin, unlock)[2:]
    assert [r.model_dump() for r in again] == [r.model_dump() for r in first]
    assert gateway.correlations[str(unlock)] == b"again"
    assert car.ecus.requests_seen == requests  # nothing written to the bus
    assert car.state.locked is True
    assert car.unit.counters.commands_repeated == 1

    # A rejection is final too: a redelivered rejected command is answered the same way.
    late = await gateway.command(
        car.vin, "lock", issued_at=time.time_ns() // 1_000_000 - 60_000, ttl_ms=30_000
    )
    assert await _final(gateway, car, late) == [CommandOutcome.REJECTED]
    await gateway.command(
        car.vin,
        "lock",
        command_id=late,
        issued_at=time.time_ns() // 1_000_000 - 60_000,
        ttl_ms=30_000,
    )
    await wait_until(lambda: len(gateway.results(car.vin, late)) >= 2, what="repeated rejection")
    assert [r.reason for r in gateway.results(car.vin, late)] == [CommandReason.EXPIRED] * 2


async def test_results_are_repeated_after_the_car_restarts(
    mqtt_broker: MosquittoBroker, tmp_path: Path, gateway: GatewayProbe
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    queue = tmp_path / "q.sqlite"
    async with running_car(
        mqtt_broker, queue, vin=vin, password=password, state=VehicleState(locked=True)
    ) as rig:
        await wait_until(lambda: gateway.samples(vin), what="first sample")
        unlock = await gateway.command(vin, "unlock", nonce="ef" * 16)
        assert await _final(gateway, rig, unlock) == [
            CommandOutcome.ACCEPTED,
            CommandOutcome.EXECUTED,
        ]
    async with running_car(
        mqtt_broker, queue, vin=vin, password=password, state=VehicleState(locked=True)
    ) as rig:
        await gateway.command(vin, "unlock", command_id=unlock, nonce="ef" * 16)
        await wait_until(lambda: len(gateway.results(vin, unlock)) >= 4, what="repeated results")
        outcomes = [r.outcome for r in gateway.results(vin, unlock)]
        assert outcomes == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED] * 2
        assert rig.ecus.requests_seen == 0
        assert rig.state.locked is True


async def test_wrong_vehicle_malformed_and_unsupported(gateway: GatewayProbe, car: CarRig) -> None:
    other = await gateway.command(car.vin, "unlock", payload_vin=random_vin())
    assert await _final(gateway, car, other) == [CommandOutcome.REJECTED]
    assert gateway.results(car.vin, other)[0].reason is CommandReason.WRONG_VEHICLE

    broken_id = uuid.uuid4()
    raw = f'{{"v":1,"command_id":"{broken_id}","action":"warp_drive"}}'.encode()
    await gateway.command(car.vin, "unlock", command_id=broken_id, raw=raw)
    assert await _final(gateway, car, broken_id) == [CommandOutcome.REJECTED]
    malformed = gateway.results(car.vin, broken_id)[0]
    assert malformed.reason is CommandReason.MALFORMED
    assert malformed.detail
    assert car.state.locked is True
    assert car.ecus.requests_seen == 0


async def test_request_state_answers_with_the_current_state(
    gateway: GatewayProbe, car: CarRig
) -> None:
    command = await gateway.command(car.vin, "request_state")
    assert await _final(gateway, car, command) == [CommandOutcome.ACCEPTED, CommandOutcome.EXECUTED]
    state = gateway.results(car.vin, command)[-1].state
    assert state is not None
    assert state.locked is True
    assert state.lat is not None


async def test_a_silent_body_controller_fails_the_command(
    mqtt_broker: MosquittoBroker, tmp_path: Path, gateway: GatewayProbe
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    settings = UnitSettings(parked_interval_s=0.5, confirm_timeout_s=0.5)
    async with running_car(
        mqtt_broker,
        tmp_path / "q.sqlite",
        vin=vin,
        password=password,
        settings=settings,
        body=BodyBehaviour(answers=False),
    ) as rig:
        await wait_until(lambda: gateway.samples(vin), what="first sample")
        command = await gateway.command(vin, "unlock")
        assert await _final(gateway, rig, command) == [
            CommandOutcome.ACCEPTED,
            CommandOutcome.FAILED,
        ]
        failed = gateway.results(vin, command)[-1]
        assert failed.reason is CommandReason.CAN_TIMEOUT
        assert rig.ecus.requests_seen == 1  # the frame was on the bus; nobody answered


async def test_a_second_command_while_one_executes_is_busy(
    mqtt_broker: MosquittoBroker, tmp_path: Path, gateway: GatewayProbe
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    async with running_car(
        mqtt_broker,
        tmp_path / "q.sqlite",
        vin=vin,
        password=password,
        body=BodyBehaviour(delay_s=1.0),
    ) as rig:
        await wait_until(lambda: gateway.samples(vin), what="first sample")
        slow = await gateway.command(vin, "unlock")
        await wait_until(lambda: gateway.results(vin, slow), what="accepted")
        second = await gateway.command(vin, "request_state")
        assert await _final(gateway, rig, second) == [CommandOutcome.REJECTED]
        assert gateway.results(vin, second)[0].reason is CommandReason.BUSY
        assert await _final(gateway, rig, slow) == [
            CommandOutcome.ACCEPTED,
            CommandOutcome.EXECUTED,
        ]
