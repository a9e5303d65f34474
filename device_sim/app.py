"""Composition root of one car (`tgw sim car`, `tgw sim replay`): bus, ECUs, queue, unit.

On a real box, run it with `--can-interface socketcan --channel can0 --no-ecus`: the same
unit then decodes the car's own frames. With `virtual` (the default) or `vcan0`, simulated
ECUs share the bus and (with `--drive`) the car rents itself out around Munich.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from device_sim.canbus import LocalCanNetwork, PythonCanBus
from device_sim.codec import DecodeCounters
from device_sim.driving import CITIES, CarBehaviour
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.errors import BrokerError, DeviceConfigurationError
from device_sim.outbox import OutboxStore
from device_sim.profiles import load_profile
from device_sim.replay import ReplayClock, log_span_ms, play_log
from device_sim.settings import SimSettings
from device_sim.unit import TelematicsUnit, UnitCounters
from device_sim.verifier import verifier_for

__all__ = ["ReplaySummary", "install_stop_signals", "run_car", "run_replay"]

_log = structlog.get_logger(__name__)


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGINT and SIGTERM (an orderly shutdown, not a traceback)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop)


async def run_car(
    settings: SimSettings,
    *,
    vin: str,
    password: str | None,
    drive: bool = False,
    duration_s: float | None = None,
    on_ready: Callable[[TelematicsUnit], None] | None = None,
) -> UnitCounters:
    """Run one car until SIGINT/SIGTERM or `duration_s`; return what its unit did.

    Raises:
        DeviceError: the profile, the CAN interface or the queue cannot be used.
    """
    can_settings = settings.can
    channel = can_settings.channel
    if channel is None:
        if can_settings.interface != "virtual":
            raise DeviceConfigurationError(
                f"CAN interface {can_settings.interface} needs a channel, e.g. --channel can0"
            )
        channel = f"tgw-{vin}"
    profile = load_profile(settings.unit.profile)
    queue_file = settings.unit.queue_dir / f"{vin}.sqlite"
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            OutboxStore(queue_file, commit_interval_s=settings.unit.commit_interval_s)
        )
        unit_bus = await stack.enter_async_context(
            PythonCanBus(can_settings.interface, channel, bitrate=can_settings.bitrate)
        )
        unit = TelematicsUnit(
            vin=vin,
            password=password,
            profile=profile,
            bus=unit_bus,
            outbox=store.vehicle(vin, max_records=settings.unit.queue_max_records),
            mqtt=settings.mqtt,
            settings=settings.unit,
            verifier=verifier_for(settings.commands.trusted_keys),
        )
        install_stop_signals(unit.stop)
        _log.info(
            "car_starting",
            vin=vin,
            profile=profile.name,
            can=f"{can_settings.interface}:{channel}",
            queued=unit.queued,
            boot_id=unit.boot_id,
        )
        async with asyncio.TaskGroup() as tasks:
            helpers: list[asyncio.Task[None]] = []
            if can_settings.simulate_ecus:
                ecu_bus = await stack.enter_async_context(
                    PythonCanBus(can_settings.interface, channel, bitrate=can_settings.bitrate)
                )
                state = VehicleState()
                ecus = SimulatedEcus(profile, state, ecu_bus)
                stack.callback(ecus.close)
                helpers.append(tasks.create_task(ecus.run_periodic(), name=f"ecus:{vin}"))
                if drive:
                    rng = random.Random(f"tgw-car:{vin}")  # noqa: S311  (simulation)
                    behaviour = CarBehaviour(
                        state, CITIES["munich"], rng, energy=profile.energy, start_driving=True
                    )
                    helpers.append(tasks.create_task(_drive(behaviour), name=f"drive:{vin}"))
            if duration_s is not None:
                helpers.append(
                    tasks.create_task(_stop_after(unit, duration_s), name=f"timer:{vin}")
                )
            unit_task = tasks.create_task(unit.run(), name=f"unit:{vin}")
            if on_ready is not None:
                on_ready(unit)
            await unit_task
            for helper in helpers:
                helper.cancel()
        return unit.counters


async def _drive(behaviour: CarBehaviour) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        now = loop.time()
        delay = behaviour.advance(now - last)
        last = now
        await asyncio.sleep(delay)


async def _stop_after(unit: TelematicsUnit, seconds: float) -> None:
    await asyncio.sleep(seconds)
    unit.stop()


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay through a unit did."""

    frames_played: int
    frames: DecodeCounters
    unit: UnitCounters
    queued: int  # rows the broker had not acknowledged when the replay ended


async def run_replay(
    settings: SimSettings,
    log_file: Path,
    *,
    vin: str,
    password: str | None,
    interval_s: float = 1.0,
    speed: float = 0.0,
    connect_timeout_s: float = 30.0,
    drain_timeout_s: float = 60.0,
) -> ReplaySummary:
    """Play a CAN log through one car's telematics unit, which publishes through the broker.

    The unit (profile `settings.unit.profile`, queue in `settings.unit.queue_dir`) connects
    first; the log's frames then go onto its bus (`device_sim.replay.play_log`), and the
    replay ends once the broker has acknowledged everything, in order (offline status,
    clean disconnect).

    Raises:
        DeviceError: the log, the profile or the queue cannot be used, or the broker was not
            reached within `connect_timeout_s` (or did not acknowledge within `drain_timeout_s`).
    """
    profile = load_profile(settings.unit.profile)
    first_ms, last_ms = log_span_ms(log_file)
    # The log ends when the replay starts: recent timestamps, spaced as recorded.
    clock = ReplayClock(time.time_ns() // 1_000_000 - last_ms, first_ms)
    network = LocalCanNetwork()
    player = network.port()
    queue_file = settings.unit.queue_dir / f"replay-{vin}.sqlite"
    mqtt = settings.mqtt
    async with OutboxStore(queue_file, commit_interval_s=settings.unit.commit_interval_s) as store:
        unit = TelematicsUnit(
            vin=vin,
            password=password,
            profile=profile,
            bus=network.port(),
            outbox=store.vehicle(vin, max_records=settings.unit.queue_max_records),
            mqtt=mqtt,
            settings=settings.unit,
            verifier=verifier_for(settings.commands.trusted_keys),
            clock=clock,
            sample_externally=True,  # sampled by log time, by the player
        )
        install_stop_signals(unit.stop)
        async with asyncio.TaskGroup() as tasks:
            unit_task = tasks.create_task(unit.run(), name=f"unit:{vin}")
            try:
                await _within(
                    unit.connected.wait(),
                    connect_timeout_s,
                    f"the car {vin} did not connect to {mqtt.host}:{mqtt.port} within "
                    f"{connect_timeout_s:g} s: is the broker up, and does it know this VIN and "
                    "password?",
                )
                played = await play_log(
                    log_file, bus=player, unit=unit, clock=clock, interval_s=interval_s, speed=speed
                )
                _log.info("replay_played", frames=played, queued=unit.queued)
                await _within(
                    _until_empty(unit),
                    drain_timeout_s,
                    f"the broker did not acknowledge everything within {drain_timeout_s:g} s "
                    f"({unit.queued} rows still queued in {queue_file})",
                )
            finally:
                unit.stop()
            await unit_task
        return ReplaySummary(played, unit.decode_counters, unit.counters, unit.queued)


async def _within(waiting: Awaitable[object], seconds: float, message: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            await waiting
    except TimeoutError:
        raise BrokerError(message) from None


async def _until_empty(unit: TelematicsUnit) -> None:
    # Polled: the queue has no "empty" event, and a replay ends once.
    while unit.queued:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
