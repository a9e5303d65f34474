"""Reconnect storm: a whole fleet loses coverage at once, comes back at once and flushes its
backlog, while its live data keeps coming.

    python -m bench.storm [options]          (or: make bench-storm BENCH_ARGS="...")
    python -m bench.storm --cars 2000 --offline 30                 (a small one)
    python -m bench.storm --cars 3000 --simulator device_sim       (the full simulator's cars)

1. --cars (20,000) cars over --processes (2) connect at --connect-rate, the gateway
   (`tgw gateway run`, --instances of it) already up; --settle seconds of live traffic.
2. All cars lose coverage at the same moment: the connection drops (no DISCONNECT: the broker
   publishes nothing and keeps each session), the car keeps sampling into its queue, for
   --offline seconds (BENCH_SECONDS, default 180).
3. They all come back at the same moment: 20,000 CONNECTs at once, each car resuming its
   session, then flushing its backlog (oldest first, batched) while its live samples go out as
   they are taken.
4. Until every car's queue is empty: gateway RSS and pending messages are sampled.

The cars (--simulator): `lean` (default) are bench/_stormcars.py: store and forward on plain
sockets, a few microseconds per message, so that the storm, not the simulator, is what this
two-core machine measures; `device_sim` is `tgw sim fleet` with its dead-zone fault (every
car a full in-car unit: CAN model, decoding, SQLite queue; about 15 % of a core per 1,000 cars,
so 20,000 of them do not fit here beside broker, gateway and database).

Figures, from the database's commit timestamps (track_commit_timestamp):
- reconnect_s: from the end of the outage until every car connected before is connected again;
- drain_s: from the end of the outage until the last backlog sample committed;
- live_p50_ms / live_p99_ms: publish-to-commit latency of the samples that connected cars sent
  as they took them, from the end of the outage to the end of the drain (lean cars record
  which; for device_sim, the samples taken once every car was back, at least 10 s of them);
- gateway_rss_mb_max: the gateway's largest RSS, with its value before the storm;
- published / stored / lost / duplicated: the cars' ledger against the database.

This machine's limits: one process may open at most `ulimit -Hn` files (20,000 here, and it
cannot be raised without CAP_SYS_RESOURCE). Mosquitto needs 6 of them for itself and one per
connection, so one broker here holds at most 19,994 clients: with the gateway connected first,
the last few of 20,000 cars cannot connect. The run says how many; their samples stay queued
in the car (not lost: the broker never acknowledged them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil
import psycopg

from bench._fleet import FleetOptions, FleetProcess
from bench._harness import bench_seconds, finish, stop_on_sigterm, storage_flag, table, work_dir
from bench._instances import GatewayInstance, metric_sum
from bench._ledger import LedgerCheck, duplicates_anywhere
from bench._measure import LatencyReport, latency
from bench._phases import say
from bench._services import FleetServices
from bench._stormcars import LeanFleet, LeanFleetOptions, check_sample
from device_sim.identity import read_credentials
from gateway.devstack import BrokerAccount
from gateway.logconfig import configure_logging

__all__ = ["main"]

_MOSQUITTO_OWN_FILES = 6  # listener, epoll, log, stdio: measured on Mosquitto 2.0.11
_STALL_S = 120.0  # a wait for connections ends when no car connected for this long


@dataclass(frozen=True)
class Options:
    simulator: str
    cars: int
    processes: int
    instances: int
    offline_s: float
    settle_s: float
    connect_rate: float
    driving_interval_s: float
    parked_interval_s: float
    driving_share: float
    drain_timeout_s: float
    seed: int
    storage: str
    durable: bool
    work_dir: Path | None
    keep: bool


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.storm",
        description="Reconnect storm: every car offline at once, back at once, with backlogs.",
        epilog="BENCH_SECONDS (default 180) is how long the cars are offline (--offline).",
    )
    parser.add_argument("--cars", type=int, default=20_000, help="cars [20000]")
    parser.add_argument(
        "--simulator", choices=("lean", "device_sim"), default="lean", help="car model [lean]"
    )
    parser.add_argument("--processes", type=int, default=2, help="car processes [2]")
    parser.add_argument("--instances", type=int, default=1, help="gateway instances [1]")
    parser.add_argument("--offline", type=float, default=None, help="seconds offline")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds of live traffic before [30]"
    )
    parser.add_argument("--connect-rate", type=float, default=250.0, help="cars/s at start")
    parser.add_argument("--driving-interval", type=float, default=10.0, help="s between samples")
    parser.add_argument("--parked-interval", type=float, default=60.0, help="s between samples")
    parser.add_argument("--driving-share", type=float, default=0.2, help="share driving [0.2]")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="give up after [900]")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--storage", choices=("auto", "timescaledb", "postgres"), default="auto")
    parser.add_argument("--no-durable", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    offline = args.offline if args.offline is not None else bench_seconds(180.0)
    return Options(
        simulator=args.simulator,
        cars=args.cars,
        processes=args.processes,
        instances=args.instances,
        offline_s=offline,
        settle_s=args.settle,
        connect_rate=args.connect_rate,
        driving_interval_s=args.driving_interval,
        parked_interval_s=args.parked_interval,
        driving_share=args.driving_share,
        drain_timeout_s=args.drain_timeout,
        seed=args.seed,
        storage=args.storage,
        durable=not args.no_durable,
        work_dir=args.work_dir,
        keep=args.keep,
    )


def broker_client_limit() -> int:
    """How many clients one Mosquitto started by this process can hold (its file limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Mosquitto inherits it
        soft = hard
    return soft - _MOSQUITTO_OWN_FILES


def _at(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, tz=UTC)


def last_commit_of(dsn: str, start_s: float, end_s: float) -> tuple[int, float | None]:
    """Samples with device time in [start, end): how many, and the last one's commit time."""
    query = """
        SELECT count(*), extract(epoch FROM max(pg_xact_commit_timestamp(xmin)))
        FROM telemetry WHERE time >= %s AND time < %s
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (_at(start_s), _at(end_s))).fetchone()
    assert row is not None
    return int(row[0]), None if row[1] is None else float(row[1])


def live_latency(dsn: str, files: list[Path], start_s: float, end_s: float) -> LatencyReport:
    """Publish-to-commit latency of the samples in the live ledger `files` taken in
    [start, end)."""
    query = """
        WITH lag AS (
            SELECT extract(epoch FROM pg_xact_commit_timestamp(t.xmin) - t.time) * 1000 AS ms
            FROM live l JOIN telemetry t
              ON t.vin = l.vin AND t.boot_id = l.boot_id AND t.seq = l.seq
             AND t.time = timestamptz 'epoch' + l.ts * interval '1 millisecond'
            WHERE l.ts >= %s AND l.ts < %s
        )
        SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
        FROM lag
    """
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TEMPORARY TABLE live (vin text, boot_id text, seq bigint, "
                     "kind text, ts bigint)")  # fmt: skip
        with conn.cursor().copy("COPY live FROM STDIN (FORMAT csv)") as copy:
            for path in files:
                if path.exists():
                    copy.write(path.read_bytes())
        row = conn.execute(query, (int(start_s * 1000), int(end_s * 1000))).fetchone()
    assert row is not None
    count, p50, p99, worst = row
    if not count:
        return LatencyReport(0, float("nan"), float("nan"), float("nan"))
    return LatencyReport(int(count), float(p50), float(p99), float(worst))


class Meter:
    """The gateway's and the broker's memory, and the gateway's pending messages, over time."""

    def __init__(self, gateways: list[GatewayInstance], services: FleetServices) -> None:
        self._gateways = gateways
        self._services = services
        self.gateway_rss_max = 0.0
        self.pending_max = 0.0
        self.broker_rss_max = 0.0
        self.cars_rss_max = 0.0

    def sample(self, cars: Cars) -> tuple[float, float]:
        rss = sum(g.rss_mb() for g in self._gateways)
        pending = sum(
            metric_sum(g.metrics(), "tgw_ingest_pending_messages") for g in self._gateways
        )
        self.gateway_rss_max = max(self.gateway_rss_max, rss)
        self.pending_max = max(self.pending_max, pending)
        self.broker_rss_max = max(self.broker_rss_max, _rss_mb(self._services.broker.pid))
        self.cars_rss_max = max(self.cars_rss_max, sum(_rss_mb(pid) for pid in cars.pids()))
        return rss, pending


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


class Cars(Protocol):
    """What the storm needs of its cars, whichever model they are."""

    def start(self) -> None: ...
    def check(self) -> None: ...
    def pids(self) -> list[int]: ...
    def status(self) -> tuple[int, int, int, float] | None:
        """(connected, samples queued in all cars, those in connected cars, wall time of the
        figures), once known."""

    def stop(self) -> dict[str, Any]: ...
    @property
    def ledgers(self) -> list[Path]: ...
    @property
    def live_ledgers(self) -> list[Path]:
        """Ledger lines of the samples sent as they were taken (empty: not recorded)."""


class LeanCars:
    """bench/_stormcars.py: the storm's timing is the controller's."""

    def __init__(self, fleet: LeanFleet) -> None:
        self.fleet = fleet

    def start(self) -> None:
        self.fleet.start()

    def check(self) -> None:
        self.fleet.check()

    def pids(self) -> list[int]:
        return self.fleet.pids()

    def status(self) -> tuple[int, int, int, float] | None:
        fleet = self.fleet
        return fleet.connected, fleet.queued, fleet.queued_online, time.time()

    def stop(self) -> dict[str, Any]:
        figures = {
            "queued": self.fleet.queued,
            "connect_failures": self.fleet.connect_failures,
            "no_subscriber_acks": self.fleet.no_subscriber,
        }
        self.fleet.stop()
        return figures

    @property
    def ledgers(self) -> list[Path]:
        return self.fleet.ledgers

    @property
    def live_ledgers(self) -> list[Path]:
        return self.fleet.live_ledgers


class SimCars:
    """`tgw sim fleet` with its dead zone: the storm's timing is the fleet's own clock."""

    def __init__(self, fleet: FleetProcess) -> None:
        self.fleet = fleet

    def start(self) -> None:
        self.fleet.start()

    def check(self) -> None:
        self.fleet.check()

    def pids(self) -> list[int]:
        return [process.pid for process in self.fleet.processes()]

    def status(self) -> tuple[int, int, int, float] | None:
        progress = self.fleet.progress
        if progress is None:
            return None
        return progress.connected, progress.queued, progress.queued, progress.seen_wall

    def stop(self) -> dict[str, Any]:
        return self.fleet.stop(timeout_s=180)

    @property
    def ledgers(self) -> list[Path]:
        assert self.fleet.options.ledger is not None
        return [self.fleet.options.ledger]

    @property
    def live_ledgers(self) -> list[Path]:
        return []


@dataclass
class Timeline:
    connected_before: int = 0
    connect_s: float = 0.0
    off_at: float = 0.0
    back_at: float = 0.0
    reconnect_s: float = 0.0
    drained: bool = False
    drained_at: float = 0.0
    rss_before: float = 0.0


class Storm:
    def __init__(self, options: Options, services: FleetServices, work: Path) -> None:
        self.options = options
        self.services = services
        self.work = work
        self.limit = broker_client_limit()
        self.reachable = min(options.cars, self.limit - options.instances)
        broker = (services.broker.host, services.broker.port)
        self.gateways = [
            GatewayInstance(
                i,
                services.add_gateway(f"tgw-storm-{i}"),
                broker=broker,
                dsn=services.dsn,
                log_file=work / f"gateway-{i}.log",
            )
            for i in range(1, options.instances + 1)
        ]
        self.meter = Meter(self.gateways, services)
        self.timeline = Timeline()

    def cars(self) -> Cars:
        options, services = self.options, self.services
        say(f"broker accounts for {options.cars:,} cars ...")
        accounts = services.add_fleet(options.cars, options.seed)
        broker = (services.broker.host, services.broker.port)
        if options.simulator == "lean":
            check_sample()
            passwords = read_credentials(accounts.credentials)
            lean = LeanFleet(
                [BrokerAccount(vin, passwords[vin], *broker) for vin in accounts.vins],
                options.processes,
                LeanFleetOptions(
                    driving_share=options.driving_share,
                    driving_interval_s=options.driving_interval_s,
                    parked_interval_s=options.parked_interval_s,
                    seed=options.seed,
                ),
                self.work / "ledgers",
                connect_rate=options.connect_rate,
            )
            return LeanCars(lean)
        self.dead_zone_after = round(options.cars / options.connect_rate + options.settle_s, 1)
        fleet = FleetProcess(
            FleetOptions(
                cars=options.cars,
                seed=options.seed,
                credentials=accounts.credentials,
                queue_dir=self.work / "queues",
                ledger=self.work / "ledger.csv",
                processes=options.processes,
                driving_interval_s=options.driving_interval_s,
                parked_interval_s=options.parked_interval_s,
                driving_share=options.driving_share,
                connect_rate=options.connect_rate,
                dead_zone_share=1.0,
                dead_zone_after_s=self.dead_zone_after,
                dead_zone_s=options.offline_s,
            ),
            broker,
            self.work / "fleet.log",
        )
        return SimCars(fleet)

    def run(self) -> dict[str, Any]:
        options, line = self.options, self.timeline
        if self.reachable < options.cars:
            say(
                f"NOTE: this machine lets a process open {self.limit + _MOSQUITTO_OWN_FILES:,} "
                f"files, so one Mosquitto holds {self.limit:,} clients: "
                f"{options.cars - self.reachable} of {options.cars:,} cars cannot connect "
                "(their samples stay queued in the car)"
            )
        cars = self.cars()
        try:
            for gateway in self.gateways:
                gateway.start()
            say(f"cars ({options.simulator}): {options.cars:,} in {options.processes} processes")
            started = time.monotonic()
            cars.start()
            if isinstance(cars, SimCars):
                origin = _wait_first_progress(cars.fleet)
                line.off_at = origin + self.dead_zone_after
                until = line.off_at - 2
            else:
                until = time.time() + 900
            line.connected_before = self._wait(cars, "connecting", until, self.reachable)
            line.connect_s = time.monotonic() - started
            say(f"  {line.connected_before:,} connected after {line.connect_s:.0f} s")
            if isinstance(cars, LeanCars):
                self._wait(cars, "live traffic", time.time() + options.settle_s, None)
                line.off_at = time.time()
                cars.fleet.set_offline(True)
            line.rss_before, _ = self.meter.sample(cars)
            line.back_at = line.off_at + options.offline_s
            say(f"all cars offline for {options.offline_s:.0f} s ...")
            self._wait(cars, "offline, queueing", line.back_at, None)
            if isinstance(cars, LeanCars):
                cars.fleet.set_offline(False)
            say("the cars come back ...")
            deadline = line.back_at + 600
            back = self._wait(cars, "reconnecting", deadline, line.connected_before, fresh=True)
            line.reconnect_s = time.time() - line.back_at
            say(f"  {back:,} of {line.connected_before:,} back after {line.reconnect_s:.1f} s")
            line.drained = self._drained(cars, options.drain_timeout_s)
            line.drained_at = time.time()
            say(f"  queues {'empty' if line.drained else 'NOT empty'} after "
                f"{line.drained_at - line.back_at:.0f} s")  # fmt: skip
        finally:
            summary = cars.stop()
            for gateway in self.gateways:
                gateway.close()
        return self.figures(cars, summary)

    def _wait(
        self, cars: Cars, label: str, until: float, target: int | None, *, fresh: bool = False
    ) -> int:
        """Until `until` (wall) or, with `target`, until that many cars are connected; print
        progress; return the most cars seen connected."""
        best, since, next_line = 0, time.time(), 0.0
        grew_at = time.monotonic()
        while time.time() < until:
            cars.check()
            rss, pending = self.meter.sample(cars)
            status = cars.status()
            if status is not None and (not fresh or status[3] > since):
                connected, queued, _, _ = status
                if connected > best:
                    best, grew_at = connected, time.monotonic()
                if target is not None and connected >= target:
                    break
                if target is not None and best and time.monotonic() - grew_at > _STALL_S:
                    say(f"  {label}: no more cars connected for {_STALL_S:.0f} s")
                    break
                if time.monotonic() >= next_line:
                    say(
                        f"  {label}: connected {connected:,}, queued {queued:,}, gateway RSS "
                        f"{rss:.0f} MB, pending {pending:,.0f}"
                    )
                    next_line = time.monotonic() + 10
            time.sleep(0.2)
        return best

    def _drained(self, cars: Cars, timeout_s: float) -> bool:
        """Until the cars' queues are (nearly) empty; False after `timeout_s`."""
        since = time.time()
        slack = max(10, self.options.cars // 1000)
        deadline = since + timeout_s
        next_line = 0.0
        while time.time() < deadline:
            cars.check()
            rss, pending = self.meter.sample(cars)
            status = cars.status()
            if status is not None and status[3] > since + 1:
                connected, queued, queued_online, _ = status
                # Cars that cannot connect (the file limit) keep theirs: not this run's drain.
                if queued_online <= slack:
                    return True
                if time.monotonic() >= next_line:
                    say(
                        f"  draining: connected {connected:,}, queued {queued:,} "
                        f"({queued_online:,} in connected cars), gateway RSS {rss:.0f} MB, "
                        f"pending {pending:,.0f}"
                    )
                    next_line = time.monotonic() + 10
            time.sleep(0.5)
        return False

    def figures(self, cars: Cars, summary: dict[str, Any]) -> dict[str, Any]:
        options, line, dsn = self.options, self.timeline, self.services.dsn
        with LedgerCheck(dsn) as ledger:
            ledger.load(cars.ledgers)
            counted, _ = ledger.wait_stored(timeout_s=300)
        backlog_rows, last_backlog_commit = last_commit_of(dsn, line.off_at, line.back_at)
        drain_s = (last_backlog_commit - line.back_at) if last_backlog_commit else None
        drain_end = max(last_backlog_commit or line.drained_at, line.back_at + 10)
        if cars.live_ledgers:
            # Live: the samples connected cars sent as they took them while the others were
            # still reconnecting and the backlog drained.
            live = live_latency(dsn, cars.live_ledgers, line.back_at, drain_end)
        else:
            # No record of which were sent live: samples taken once every car was back
            # (earlier ones waited in a queue while their car reconnected), at least 10 s.
            live_from = line.back_at + line.reconnect_s
            live = latency(dsn, live_from, max(drain_end, live_from + 10))
        meter = self.meter
        return {
            "simulator": options.simulator,
            "cars": options.cars,
            "cars_reachable": self.reachable,
            "broker_client_limit": self.limit,
            "car_processes": options.processes,
            "gateway_instances": options.instances,
            "offline_s": options.offline_s,
            "cars_connected_before": line.connected_before,
            "connect_s": round(line.connect_s, 1),
            "reconnect_s": round(line.reconnect_s, 1),
            "backlog_rows": backlog_rows,
            "drain_s": None if drain_s is None else round(drain_s, 1),
            "queues_emptied": line.drained,
            "live_p50_ms": round(live.p50_ms, 1),
            "live_p99_ms": round(live.p99_ms, 1),
            "live_max_ms": round(live.max_ms, 1),
            "live_samples": live.rows,
            "gateway_rss_mb_before": round(line.rss_before, 1),
            "gateway_rss_mb_max": round(meter.gateway_rss_max, 1),
            "gateway_pending_max": round(meter.pending_max),
            "broker_rss_mb_max": round(meter.broker_rss_max, 1),
            "cars_rss_mb_max": round(meter.cars_rss_max, 1),
            "published": counted.published,
            "stored": counted.stored,
            "lost": counted.lost,
            "duplicated": counted.duplicated,
            "duplicates_in_tables": duplicates_anywhere(dsn),
            "left_in_car_queues": int(summary.get("queued", 0)),
            "car_connect_failures": summary.get("connect_failures"),
            "no_subscriber_acks": summary.get("no_subscriber_acks"),
        }


def _wait_first_progress(fleet: FleetProcess, timeout_s: float = 600.0) -> float:
    """The wall-clock origin of the fleet's clock, from its first progress line."""
    deadline = time.monotonic() + timeout_s
    while (progress := fleet.progress) is None:
        fleet.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fleet reported nothing in {timeout_s:.0f} s")
        time.sleep(0.2)
    return progress.clock_origin


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    stop_on_sigterm()
    started = time.monotonic()
    with work_dir(options.work_dir, options.keep, "tgw-storm-") as work:
        say(f"work dir {work}; starting broker and database ...")
        services = FleetServices(
            work, timescaledb=storage_flag(options.storage), durable=options.durable
        )
        with services:
            results = Storm(options, services, work).run()
            results["timescaledb"] = services.timescaledb_enabled
    results["wall_seconds"] = round(time.monotonic() - started)
    results["cpus"] = psutil.cpu_count()
    rows = [
        [name, results[name]]
        for name in (
            "cars", "cars_reachable", "reconnect_s", "backlog_rows", "drain_s", "live_p50_ms",
            "live_p99_ms", "gateway_rss_mb_before", "gateway_rss_mb_max", "gateway_pending_max",
            "published", "stored", "lost", "duplicated", "left_in_car_queues",
        )
    ]  # fmt: skip
    say("")
    say(table(["figure", "value"], rows))
    finish(results)
    return 0 if results["lost"] == results["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
