"""Simulated cars for the commands benchmark: device_sim's in-car unit, many per process.

Each car is what `tgw sim fleet` runs (simulated ECUs on an in-process CAN bus, the telematics
unit with its store-and-forward queue and its own MQTT 5 connection and account), parked and
sampling every `interval_s`, plus what a provisioned car has and the fleet command does not
set up: an Ed25519 `CommandVerifier` trusting the gateway's public key
(`device_sim.verifier`). So every command is really verified, replay-checked against the
car's durable command memory, executed on the CAN bus and read back. The body controller
answers without actuator delay (`BodyBehaviour(delay_s=0)`): the time measured is the
system's, not a simulated motor's.

A `CarHost` is one spawned process running its share of the cars on one event loop; the
benchmark steers it through shared memory (`CarControl`).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import resource
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

__all__ = ["CarControl", "CarHost", "CarHostConfig"]

_STOP_POLL_S = 0.1
_REPORT_S = 0.25
_STOP_GRACE_S = 15.0
_MP = mp.get_context("spawn")  # a clean interpreter: the parent may run an event loop


@dataclass(frozen=True, slots=True)
class CarHostConfig:
    """What one car process runs (plain data: it crosses into a spawned process)."""

    cars: tuple[tuple[str, str], ...]  # (VIN, broker password)
    broker_host: str
    broker_port: int
    key_id: str
    public_key_hex: str
    interval_s: float
    queue_dir: Path
    profile: str = "tgw_generic"
    connect_rate_per_s: float = 500.0


@dataclass
class CarControl:
    """Shared memory between the benchmark and one car process (one writer per value)."""

    connected: Any
    received: Any
    executed: Any
    rejected: Any
    failed: Any
    published: Any
    stop: Any

    @classmethod
    def create(cls) -> CarControl:
        def value() -> Any:
            return _MP.Value("q", 0, lock=False)

        return cls(value(), value(), value(), value(), value(), value(), _MP.Event())


class CarHost:
    """One process of simulated cars; `start()`, then `wait_connected()`, then `stop()`."""

    def __init__(self, config: CarHostConfig, log_file: Path) -> None:
        self.config = config
        self.control = CarControl.create()
        self._process: SpawnProcess = _MP.Process(
            target=_main,
            args=(config, self.control, str(log_file)),
            name="bench-cars",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    @property
    def cars(self) -> int:
        return len(self.config.cars)

    def start(self) -> None:
        self._process.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.control.stop.set()
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# --- inside the car process -------------------------------------------------------------------


def _main(config: CarHostConfig, control: CarControl, log_file: str) -> None:
    import sys  # noqa: PLC0415  # only the child redirects its output

    from device_sim.logconfig import configure_logging  # noqa: PLC0415  # the child's imports

    with open(log_file, "a", encoding="utf-8") as log:  # a plain log stream
        sys.stderr = log
        configure_logging("WARNING", json=True)
        asyncio.run(_run(config, control))


async def _run(config: CarHostConfig, control: CarControl) -> None:
    # The child's own imports: the parent (the benchmark) never loads device_sim's units.
    from device_sim.canbus import LocalCanNetwork  # noqa: PLC0415
    from device_sim.codec import FrameEncoder  # noqa: PLC0415
    from device_sim.ecu import BodyBehaviour, SimulatedEcus, VehicleState  # noqa: PLC0415
    from device_sim.outbox import OutboxStore  # noqa: PLC0415
    from device_sim.profiles import load_profile  # noqa: PLC0415
    from device_sim.settings import MqttSettings, UnitSettings  # noqa: PLC0415
    from device_sim.unit import TelematicsUnit  # noqa: PLC0415
    from device_sim.verifier import Ed25519Verifier, parse_trusted_keys  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(config.cars) + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    profile = load_profile(config.profile)
    encoder = FrameEncoder(profile)
    verifier = Ed25519Verifier(parse_trusted_keys({config.key_id: config.public_key_hex}))
    mqtt = MqttSettings(
        host=config.broker_host,
        port=config.broker_port,
        reconnect_initial_s=0.2,
        reconnect_max_s=2.0,
    )
    settings = UnitSettings(
        profile=config.profile,
        parked_interval_s=config.interval_s,
        driving_interval_s=config.interval_s,
        min_interval_s=min(1.0, config.interval_s),
        queue_dir=config.queue_dir,
    )
    no_delay = BodyBehaviour(
        answers=True, delay_s=0.0
    )  # the benchmark's body ECU: no actuator time
    config.queue_dir.mkdir(parents=True, exist_ok=True)
    queue_file = config.queue_dir / f"cars-{config.cars[0][0]}.sqlite"
    async with OutboxStore(queue_file, commit_interval_s=settings.commit_interval_s) as store:
        cars = []
        for index, (vin, password) in enumerate(config.cars):
            network = LocalCanNetwork()
            ecus = SimulatedEcus(
                profile, VehicleState(locked=True), network.port(), body=no_delay, encoder=encoder
            )
            unit = TelematicsUnit(
                vin=vin,
                password=password,
                profile=profile,
                bus=network.port(),
                outbox=store.vehicle(vin, max_records=settings.queue_max_records),
                mqtt=mqtt,
                settings=settings,
                verifier=verifier,
                rng=random.Random(index),  # reconnect jitter only
            )
            cars.append((ecus, unit))
        async with asyncio.TaskGroup() as tasks:
            runs = [
                tasks.create_task(_car(ecus, unit, index / config.connect_rate_per_s))
                for index, (ecus, unit) in enumerate(cars)
            ]
            reporter = tasks.create_task(_report([unit for _, unit in cars], control))
            while not control.stop.is_set():  # noqa: ASYNC110  # a multiprocessing Event: not awaitable
                await asyncio.sleep(_STOP_POLL_S)
            for _, unit in cars:
                unit.stop()
            _done, pending = await asyncio.wait(runs, timeout=_STOP_GRACE_S)
            for task in pending:
                task.cancel()
            reporter.cancel()
        _publish_counters([unit for _, unit in cars], control)


async def _car(ecus: Any, unit: Any, start_after_s: float) -> None:
    await asyncio.sleep(start_after_s)  # a bounded connect rate, no thundering herd
    run = asyncio.create_task(unit.run(), name=f"unit:{unit.vin}")
    await asyncio.sleep(0)  # the unit listens on its bus now: the ECUs' first frames reach it
    ecus.send_all()
    try:
        await run
    finally:
        ecus.close()


async def _report(units: list[Any], control: CarControl) -> None:
    while True:
        _publish_counters(units, control)
        await asyncio.sleep(_REPORT_S)


def _publish_counters(units: list[Any], control: CarControl) -> None:
    counters = [unit.counters for unit in units]
    control.connected.value = sum(unit.connected.is_set() for unit in units)
    control.received.value = sum(c.commands_received for c in counters)
    control.executed.value = sum(c.commands_executed for c in counters)
    control.rejected.value = sum(c.commands_rejected for c in counters)
    control.failed.value = sum(c.commands_failed for c in counters)
    control.published.value = sum(c.messages_published for c in counters)
