"""Composition root of one car (`tgw sim car`): bus, simulated ECUs, queue, telematics unit.

On a real box, run it with `--can-interface socketcan --channel can0 --no-ecus`: the same
unit then decodes the car's own frames. With `virtual` (the default) or `vcan0`, simulated
ECUs share the bus and (with `--drive`) the car rents itself out around Munich.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Callable

import structlog

from device_sim.canbus import PythonCanBus
from device_sim.driving import CITIES, CarBehaviour
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.errors import DeviceConfigurationError
from device_sim.outbox import OutboxStore
from device_sim.profiles import load_profile
from device_sim.settings import SimSettings
from device_sim.unit import TelematicsUnit, UnitCounters
from device_sim.verifier import verifier_for

__all__ = ["install_stop_signals", "run_car"]

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
