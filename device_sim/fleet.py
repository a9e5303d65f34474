"""A simulated fleet in one process: N cars, each with its own ECUs, bus, unit and MQTT connection.

Every car is a full in-car unit (CAN decoding with its model's profile, store and forward,
commands); only the bus is in-process (`LocalCanNetwork`: no thread per car) and the
ECUs send frames when their state changes rather than at their DBC period. The cars
share one SQLite file for their queues and one ledger file.

Deterministic for a seed: VINs, models, starting positions and every drive come from
per-car random generators seeded with (seed, car index).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import heapq
import random
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from device_sim.canbus import LocalCanNetwork
from device_sim.codec import FrameEncoder
from device_sim.driving import CITIES, CarBehaviour
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.errors import DeviceConfigurationError
from device_sim.identity import fleet_vins
from device_sim.ledger import CsvLedger, Ledger, NullLedger
from device_sim.outbox import OutboxStore
from device_sim.profiles import SignalProfile, load_profile
from device_sim.settings import SimSettings
from device_sim.unit import SystemClock, TelematicsUnit, UnitFaults
from device_sim.verifier import verifier_for

__all__ = ["Fleet", "FleetFaults", "FleetProgress", "FleetSummary", "SimulatedCar"]

_log = structlog.get_logger(__name__)
_STOP_GRACE_S = 15.0
_TICK_BATCH = 500  # cars stepped between two turns of the event loop
_TICK_MAX_S = 0.1


@dataclass(frozen=True, slots=True)
class FleetFaults:
    """Fault injection across the fleet (all off by default).

    Args:
        drop_per_min: share of connected cars whose connection drops abruptly each minute.
        dead_zone_share: share of cars that drive into a dead zone (no coverage) ...
        dead_zone_after_s: ... this long after the start ...
        dead_zone_s: ... for this long; their backlog flushes when they come back.
        duplicate_share: share of messages published twice.
        malformed_share: share of telemetry messages followed by a malformed one.
        clock_skew_share: share of cars whose clock is off ...
        clock_skew_s: ... by this much (positive: ahead).
    """

    drop_per_min: float = 0.0
    dead_zone_share: float = 0.0
    dead_zone_after_s: float = 60.0
    dead_zone_s: float = 300.0
    duplicate_share: float = 0.0
    malformed_share: float = 0.0
    clock_skew_share: float = 0.0
    clock_skew_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FleetProgress:
    elapsed_s: float
    cars: int
    connected: int
    messages: int
    msgs_per_s: float
    queued: int
    cpu_pct: float  # this process, over the last interval


@dataclass(slots=True)
class FleetSummary:
    """What a fleet run did (the CLI prints it as the last line, as JSON)."""

    vehicles: int
    elapsed_s: float
    connect_s: float | None  # until every car had connected once
    connected: int  # at the end
    msgs_published: int
    msgs_per_s: float
    rows_acknowledged: int
    samples: int
    events: int
    backlog_messages: int
    queued: int  # rows still in the queues at the end
    overflow_dropped: int
    sessions: int
    connect_failures: int
    commands_received: int
    commands_executed: int
    commands_rejected: int
    commands_failed: int
    duplicates_sent: int
    malformed_sent: int
    frames: int
    frames_unknown: int
    out_of_range: int
    trips: int
    ledger_rows: int
    sim_cpu_pct: float
    sim_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


@dataclass(slots=True)
class SimulatedCar:
    """One car of the fleet: state, behaviour, ECUs, unit (and when the ticker steps it)."""

    index: int
    vin: str
    profile: SignalProfile
    state: VehicleState
    behaviour: CarBehaviour
    ecus: SimulatedEcus
    unit: TelematicsUnit
    running: bool = False
    last_step: float = 0.0
    next_step: float = 0.0


class Fleet:
    """Runs a fleet of simulated cars until `stop()` or a duration.

    Args:
        settings: all of `tgw sim`'s settings (fleet, unit, MQTT sections).
        credentials: VIN -> broker password, for every car of the fleet.
        faults: fault injection.
        on_progress: called every `progress_interval_s` with the fleet's progress.
    """

    def __init__(
        self,
        settings: SimSettings,
        credentials: Mapping[str, str],
        *,
        faults: FleetFaults | None = None,
        on_progress: Callable[[FleetProgress], None] | None = None,
        progress_interval_s: float = 10.0,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        self.settings = settings
        self.faults = faults or FleetFaults()
        self._credentials = credentials
        self._on_progress = on_progress
        self._progress_interval_s = progress_interval_s
        self._stopping = asyncio.Event()
        self.cars: list[SimulatedCar] = []
        # The ticker's schedule: (loop time due, car index, car), earliest first.
        self._due: list[tuple[float, int, SimulatedCar]] = []
        self.part, self.parts = part
        fleet = settings.fleet
        # Part k of n runs cars k, k+n, k+2n, ...: every part gets its share of each model.
        self.identities = [
            (index, vin, profile)
            for index, (vin, profile) in enumerate(
                fleet_vins(fleet.cars, fleet.seed, fleet.profiles)
            )
            if index % self.parts == self.part
        ]
        missing = [vin for _, vin, _ in self.identities if vin not in credentials]
        if missing:
            raise DeviceConfigurationError(
                f"{len(missing)} of {fleet.cars} cars have no password in the credentials "
                f"(first: {missing[0]}); write them with `tgw sim credentials --cars "
                f"{fleet.cars} --seed {fleet.seed}` and create the broker accounts from that file"
            )

    def stop(self) -> None:
        """End the run: every car disconnects in order (idempotent)."""
        self._stopping.set()

    async def run(self, duration_s: float | None = None) -> FleetSummary:
        """Run the fleet; return its summary once every car has stopped."""
        settings = self.settings
        _raise_file_limit(len(self.identities))
        suffix = "" if self.parts == 1 else f"-p{self.part}of{self.parts}"
        queue_file = settings.unit.queue_dir / f"fleet-{settings.fleet.seed}{suffix}.sqlite"
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                OutboxStore(queue_file, commit_interval_s=settings.unit.commit_interval_s)
            )
            ledger: Ledger = NullLedger()
            csv_ledger = None
            if settings.fleet.ledger_file is not None:
                csv_ledger = await stack.enter_async_context(
                    CsvLedger(ledger_part(settings.fleet.ledger_file, self.part, self.parts))
                )
                ledger = csv_ledger
            # Tens of thousands of long-lived objects (cars, profiles): build them without the
            # cyclic GC walking them again and again, then move them out of its sight.
            slots = asyncio.Semaphore(max(1, settings.fleet.connect_concurrency // self.parts))
            gc.disable()
            try:
                self.cars = self._build(store, ledger, slots)
            finally:
                gc.enable()
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            # Tens of thousands of long-lived connections arrive while the fleet connects; with
            # the default thresholds full collections walk them again and again (measured: a
            # sixth of the simulator's CPU at 20,000 cars). Young collections a little rarer,
            # full ones rarely: almost all garbage here is freed by reference counting.
            thresholds = gc.get_threshold()
            gc.set_threshold(20_000, 20, 1_000)
            stack.callback(gc.set_threshold, *thresholds)
            gc_time = _GcTimer()
            gc.callbacks.append(gc_time)
            stack.callback(gc.callbacks.remove, gc_time)
            # The clock starts once the fleet is built: connect_s measures the connecting.
            started = time.monotonic()
            cpu_started = time.process_time()
            connect_s: list[float] = []
            async with asyncio.TaskGroup() as tasks:
                runs = [
                    tasks.create_task(self._run_car(car, started), name=f"car:{car.vin}")
                    for car in self.cars
                ]
                watchers = [
                    tasks.create_task(self._tick_loop(), name="fleet-ticker"),
                    tasks.create_task(self._progress_loop(started), name="fleet-progress"),
                    tasks.create_task(
                        self._connect_watch(started, connect_s), name="fleet-connect"
                    ),
                    tasks.create_task(self._fault_loop(started), name="fleet-faults"),
                ]
                if duration_s is not None:
                    await self._wait_stop(duration_s)
                else:
                    await self._stopping.wait()
                elapsed = time.monotonic() - started
                cpu = time.process_time() - cpu_started
                connected_at_end = sum(car.unit.connected.is_set() for car in self.cars)
                for car in self.cars:
                    car.unit.stop()
                for watcher in watchers:
                    watcher.cancel()
                _done, pending = await asyncio.wait(runs, timeout=_STOP_GRACE_S)
                for task in pending:
                    task.cancel()
            summary = self._summary(
                elapsed, cpu, connect_s[0] if connect_s else None, connected_at_end
            )
            summary.queued = sum(car.unit.queued for car in self.cars)
            summary.extra["gc_cpu_s"] = round(gc_time.total_s, 2)
            if csv_ledger is not None:
                summary.ledger_rows = csv_ledger.count
            return summary

    async def _wait_stop(self, duration_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), duration_s)

    def _build(
        self, store: OutboxStore, ledger: Ledger, connect_slots: asyncio.Semaphore
    ) -> list[SimulatedCar]:
        settings = self.settings
        fleet = settings.fleet
        city = CITIES[fleet.city]
        profiles = {name: load_profile(name) for name in set(fleet.profiles)}
        encoders = {name: FrameEncoder(profile) for name, profile in profiles.items()}
        faults = self.faults
        # One verifier for every car: the fleet's trust list (none configured: structure only).
        verifier = verifier_for(settings.commands.trusted_keys)
        # A generator's state is 2.5 KB: one per car only where a car's own sequence matters
        # (its drives; its message faults when injected). Reconnect jitter needs none.
        seed = fleet.seed
        jitter = random.Random(f"tgw-jitter:{seed}:{self.part}")  # noqa: S311
        message_faults = bool(faults.duplicate_share or faults.malformed_share)
        no_faults = UnitFaults(rng=jitter)  # never draws
        cars = []
        for local_index, (index, vin, profile_name) in enumerate(self.identities):
            rng = random.Random(f"tgw-car:{fleet.seed}:{index}")  # noqa: S311  (simulation)
            profile = profiles[profile_name]
            state = VehicleState()
            behaviour = CarBehaviour(
                state,
                city,
                rng,
                energy=profile.energy,
                driving_share=fleet.driving_share,
                start_driving=rng.random() < fleet.driving_share,
            )
            network = LocalCanNetwork()
            ecus = SimulatedEcus(profile, state, network.port(), encoder=encoders[profile_name])
            skewed = faults.clock_skew_share and rng.random() < faults.clock_skew_share
            clock = SystemClock(int(faults.clock_skew_s * 1000) if skewed else 0)
            unit = TelematicsUnit(
                vin=vin,
                password=self._credentials[vin],
                profile=profile,
                bus=network.port(),
                outbox=store.vehicle(vin, max_records=settings.unit.queue_max_records),
                mqtt=settings.mqtt,
                settings=settings.unit,
                ledger=ledger,
                clock=clock,
                faults=UnitFaults(
                    duplicate_share=faults.duplicate_share,
                    malformed_share=faults.malformed_share,
                    rng=random.Random(f"tgw-faults:{seed}:{index}"),  # noqa: S311
                )
                if message_faults
                else no_faults,
                rng=jitter,
                sample_externally=True,  # sampled by the fleet's ticker: no task per car
                verifier=verifier,
                connect_slots=connect_slots,
            )
            cars.append(SimulatedCar(local_index, vin, profile, state, behaviour, ecus, unit))
        return cars

    async def _run_car(self, car: SimulatedCar, started: float) -> None:
        # Stagger the start: a bounded connect rate, and no thundering herd at t=0.
        rate = self.settings.fleet.connect_rate_per_s / self.parts
        start_at = started + car.index / rate
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if self._stopping.is_set():
            return
        car.ecus.send_all()
        # The car starts driving once it is online: while a fleet connects, the cores go to
        # connecting, not to thousands of cars queueing samples nobody can send yet. From
        # then on it lives on whatever its connection does (dead zones queue, as in a car).
        car.unit.on_connected = functools.partial(self._join, car)
        try:
            await car.unit.run()
        finally:
            car.running = False  # the ticker drops it

    def _join(self, car: SimulatedCar) -> None:
        if car.running:
            return
        now = asyncio.get_running_loop().time()
        car.running, car.last_step, car.next_step = True, now, now
        heapq.heappush(self._due, (now, car.index, car))

    async def _tick_loop(self) -> None:
        """Step every running car when it is due, from this one task.

        A task and a timer per car cost more than the step itself at thousands of cars: one
        ticker pops the cars that are due (their driving model and ECUs, then the unit's
        sampling policy) and schedules each again; it yields to the loop between batches.
        """
        loop = asyncio.get_running_loop()
        due = self._due
        while True:
            now = loop.time()
            stepped = 0
            while due and due[0][0] <= now and stepped < _TICK_BATCH:
                _, index, car = heapq.heappop(due)
                stepped += 1
                if car.running:
                    heapq.heappush(due, (_step(car, now), index, car))
            if stepped < _TICK_BATCH:
                # New cars join with "due now": look again within _TICK_MAX_S at the latest.
                wait = min(due[0][0] - loop.time(), _TICK_MAX_S) if due else _TICK_MAX_S
                await asyncio.sleep(max(wait, 0.0))
            else:
                await asyncio.sleep(0)  # a long batch: let the network in

    async def _connect_watch(self, started: float, result: list[float]) -> None:
        # Wait until every car has connected once (connected is set per session).
        await asyncio.gather(*(car.unit.connected.wait() for car in self.cars))
        result.append(round(time.monotonic() - started, 2))
        # The connections live as long as the run: out of the cyclic GC's sight, like the cars.
        gc.collect()
        gc.freeze()
        _log.info("fleet_connected", cars=len(self.cars), connect_s=result[0])

    async def _progress_loop(self, started: float) -> None:
        previous = 0
        last = time.monotonic()
        last_cpu = time.process_time()
        while True:
            await asyncio.sleep(self._progress_interval_s)
            now = time.monotonic()
            cpu = time.process_time()
            messages = sum(car.unit.counters.messages_published for car in self.cars)
            progress = FleetProgress(
                elapsed_s=round(now - started, 1),
                cars=len(self.cars),
                connected=sum(car.unit.connected.is_set() for car in self.cars),
                messages=messages,
                msgs_per_s=round((messages - previous) / (now - last), 1),
                queued=sum(car.unit.queued for car in self.cars),
                cpu_pct=round(100 * (cpu - last_cpu) / (now - last), 1),
            )
            previous, last, last_cpu = messages, now, cpu
            if self._on_progress is not None:
                self._on_progress(progress)

    async def _fault_loop(self, started: float) -> None:
        faults = self.faults
        if not (faults.drop_per_min or faults.dead_zone_share):
            return
        seed = self.settings.fleet.seed
        rng = random.Random(f"tgw-fleet-faults:{seed}:{self.part}")  # noqa: S311
        dead_zone_done = not faults.dead_zone_share
        while True:
            await asyncio.sleep(1.0)
            if not dead_zone_done and time.monotonic() - started >= faults.dead_zone_after_s:
                dead_zone_done = True
                count = round(len(self.cars) * faults.dead_zone_share)
                for car in rng.sample(self.cars, count):
                    car.unit.drop_connection(offline_s=faults.dead_zone_s)
                _log.info("fleet_dead_zone", cars=count, offline_s=faults.dead_zone_s)
            if faults.drop_per_min:
                for car in self.cars:
                    if car.unit.connected.is_set() and rng.random() < faults.drop_per_min / 60:
                        car.unit.drop_connection()

    def _summary(
        self, elapsed: float, cpu: float, connect_s: float | None, connected: int
    ) -> FleetSummary:
        counters = [car.unit.counters for car in self.cars]
        decode = [car.unit.decode_counters for car in self.cars]
        messages = sum(c.messages_published for c in counters)
        return FleetSummary(
            vehicles=len(self.cars),
            elapsed_s=round(elapsed, 2),
            connect_s=connect_s,
            connected=connected,
            msgs_published=messages,
            msgs_per_s=round(messages / elapsed, 1) if elapsed > 0 else 0.0,
            rows_acknowledged=sum(c.rows_acknowledged for c in counters),
            samples=sum(c.samples for c in counters),
            events=sum(c.events for c in counters),
            backlog_messages=sum(c.backlog_messages for c in counters),
            queued=0,
            overflow_dropped=sum(car.unit.overflow_dropped for car in self.cars),
            sessions=sum(c.sessions for c in counters),
            connect_failures=sum(c.connect_failures for c in counters),
            commands_received=sum(c.commands_received for c in counters),
            commands_executed=sum(c.commands_executed for c in counters),
            commands_rejected=sum(c.commands_rejected for c in counters),
            commands_failed=sum(c.commands_failed for c in counters),
            duplicates_sent=sum(c.duplicates_sent for c in counters),
            malformed_sent=sum(c.malformed_sent for c in counters),
            frames=sum(d.frames for d in decode),
            frames_unknown=sum(d.unknown for d in decode),
            out_of_range=sum(d.out_of_range for d in decode),
            trips=sum(car.behaviour.trips for car in self.cars),
            ledger_rows=0,
            sim_cpu_pct=round(100 * cpu / elapsed, 1) if elapsed > 0 else 0.0,
            sim_rss_mb=round(_rss_mb(), 1),
        )


class _GcTimer:
    """CPU time spent in the cyclic garbage collector (a `gc.callbacks` entry)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.total_s += time.process_time() - self._started


def _step(car: SimulatedCar, now: float) -> float:
    """Step one car at loop time `now`; return when it is next due."""
    if now >= car.next_step:
        car.next_step = now + car.behaviour.advance(now - car.last_step)
        car.last_step = now
        car.ecus.send_changed()
    # The unit has decoded the frames by now: its sampling policy runs in the same step.
    return min(car.next_step, now + car.unit.sample_tick(now))


def ledger_part(path: Path, part: int, parts: int) -> Path:
    """The ledger file of one part of a fleet split over processes (merged at the end)."""
    return path if parts == 1 else path.with_name(f"{path.name}.p{part}")


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raise_file_limit(cars: int) -> None:
    # One socket per car plus a few files: lift the soft limit as far as the hard one allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = cars + 256
    if soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        if new_soft < wanted:
            raise DeviceConfigurationError(
                f"{cars} cars need about {wanted} open files but the limit is {hard}: "
                "raise it (ulimit -n) or split the fleet over several processes"
            )
