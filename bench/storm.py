"""Reconnect storm: a whole fleet loses coverage at once, comes back at once and flushes its
backlog, while its live data keeps coming.

    python -m bench.storm [options]          (or: make bench-storm BENCH_ARGS="...")
    python -m bench.storm --cars 2000 --offline 30     (a small one)

1. `tgw sim fleet` with --cars (20,000) over --processes (2) connects at --connect-rate, with
   the gateway (`tgw gateway run`, --instances of it) already up.
2. All cars drive into a dead zone at the same moment (the simulator's own fault: the
   connection drops, the car keeps sampling into its on-disk queue) for --offline seconds
   (BENCH_SECONDS, default 180).
3. They all come back at the same moment: 20,000 CONNECTs at once, each car resuming its
   session, publishing its birth, then its backlog (oldest first, batched) while its live
   samples go out as they are taken.
4. Until every car's queue is empty: gateway RSS and pending messages are sampled.

Figures, from the database's commit timestamps (track_commit_timestamp):
- reconnect_s: from the end of the dead zone until (almost) every car is connected again;
- drain_s: from the end of the dead zone until the last backlog sample committed;
- live_p50_ms / live_p99_ms: publish-to-commit latency of the samples taken once every car was
  connected again, up to the end of the drain (at least 10 s of them): live data during it;
- gateway_rss_mb_max: the gateway's largest RSS, with its value before the storm;
- published / stored / lost / duplicated: the fleet's ledger against the database.

This machine's limits: one process may open at most `ulimit -Hn` files (20,000 here, and it
cannot be raised without CAP_SYS_RESOURCE). Mosquitto needs 6 of them for itself and one per
connection, so one broker here holds at most 19,994 clients: with the gateway connected first,
the last few of 20,000 cars cannot connect. The run says how many; their data stays queued on
their disks (not lost: the broker never acknowledged it).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench._fleet import FleetOptions, FleetProcess
from bench._harness import bench_seconds, finish, storage_flag, table, work_dir
from bench._instances import GatewayInstance, metric_sum
from bench._ledger import LedgerCheck, duplicates_anywhere
from bench._measure import latency
from bench._phases import say
from bench._services import FleetServices
from gateway.logconfig import configure_logging

__all__ = ["main"]

_MOSQUITTO_OWN_FILES = 6  # listener, epoll, log, stdio: measured on Mosquitto 2.0.11
_TICK_S = 1.0


@dataclass(frozen=True)
class Options:
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
    parser.add_argument("--processes", type=int, default=2, help="fleet processes [2]")
    parser.add_argument("--instances", type=int, default=1, help="gateway instances [1]")
    parser.add_argument("--offline", type=float, default=None, help="seconds offline")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds of live traffic before [30]"
    )
    parser.add_argument("--connect-rate", type=float, default=500.0, help="cars/s at start")
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


class Meter:
    """The gateway's and the broker's memory, and the gateway's pending messages, over time."""

    def __init__(self, gateways: list[GatewayInstance], services: FleetServices) -> None:
        self._gateways = gateways
        self._services = services
        self.gateway_rss_max = 0.0
        self.pending_max = 0.0
        self.broker_rss_max = 0.0
        self.fleet_rss_max = 0.0

    def sample(self, fleet: FleetProcess | None = None) -> tuple[float, float]:
        rss = sum(g.rss_mb() for g in self._gateways)
        pending = sum(
            metric_sum(g.metrics(), "tgw_ingest_pending_messages") for g in self._gateways
        )
        self.gateway_rss_max = max(self.gateway_rss_max, rss)
        self.pending_max = max(self.pending_max, pending)
        pid = self._services.broker.pid
        if pid is not None:
            try:
                broker = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                broker = 0.0
            self.broker_rss_max = max(self.broker_rss_max, broker)
        if fleet is not None:
            total = 0.0
            for process in fleet.processes():
                try:
                    total += process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            self.fleet_rss_max = max(self.fleet_rss_max, total)
        return rss, pending


def run_storm(options: Options, services: FleetServices, work: Path) -> dict[str, Any]:
    limit = broker_client_limit()
    reachable = min(options.cars, limit - options.instances)
    if reachable < options.cars:
        say(
            f"NOTE: this machine lets a process open {limit + _MOSQUITTO_OWN_FILES:,} files, so "
            f"one Mosquitto holds {limit:,} clients: {options.cars - reachable} of "
            f"{options.cars:,} cars cannot connect (their data stays queued on their disks)"
        )
    say(f"broker accounts for {options.cars:,} cars ...")
    fleet_accounts = services.add_fleet(options.cars, options.seed)
    broker = (services.broker.host, services.broker.port)
    gateways = [
        GatewayInstance(
            i,
            services.add_gateway(f"tgw-storm-{i}"),
            broker=broker,
            dsn=services.dsn,
            log_file=work / f"gateway-{i}.log",
        )
        for i in range(1, options.instances + 1)
    ]
    meter = Meter(gateways, services)
    connect_s = options.cars / options.connect_rate
    dead_zone_after = round(connect_s + options.settle_s, 1)
    fleet = FleetProcess(
        FleetOptions(
            cars=options.cars,
            seed=options.seed,
            credentials=fleet_accounts.credentials,
            queue_dir=work / "queues",
            ledger=work / "ledger.csv",
            processes=options.processes,
            driving_interval_s=options.driving_interval_s,
            parked_interval_s=options.parked_interval_s,
            driving_share=options.driving_share,
            connect_rate=options.connect_rate,
            dead_zone_share=1.0,
            dead_zone_after_s=dead_zone_after,
            dead_zone_s=options.offline_s,
        ),
        broker,
        work / "fleet.log",
    )
    results: dict[str, Any] = {}
    try:
        for gateway in gateways:
            gateway.start()
        say(f"fleet: {options.cars:,} cars in {options.processes} processes ...")
        fleet.start()
        connected_s = fleet.wait_connected(share=reachable / options.cars, timeout_s=900)
        progress = fleet.progress
        assert progress is not None
        origin = progress.clock_origin
        off_at = origin + dead_zone_after
        back_at = off_at + options.offline_s
        say(
            f"  {progress.connected:,} connected {connected_s:.0f} s after the start; "
            f"all go offline in {off_at - time.time():.0f} s for {options.offline_s:.0f} s"
        )
        rss_before, _ = meter.sample(fleet)
        _wait_until(back_at, fleet, meter, "offline: the cars queue")
        say("the cars come back ...")
        reconnect_s = _wait_reconnected(fleet, meter, back_at, reachable)
        say(f"  {reachable:,} cars connected again {reconnect_s:.1f} s after the dead zone ended")
        drained = _wait_drained(
            fleet, meter, options.drain_timeout_s, slack=max(10, options.cars // 1000)
        )
        wall_drained = time.time()
        say(f"  queues {'empty' if drained else 'NOT empty'} {wall_drained - back_at:.0f} s later")
    finally:
        summary = fleet.stop(timeout_s=180)
        for gateway in gateways:
            gateway.close()
    with LedgerCheck(services.dsn) as ledger:
        ledger.load([work / "ledger.csv"])
        counted, _ = ledger.wait_stored(timeout_s=300)
    backlog_rows, last_backlog_commit = last_commit_of(services.dsn, off_at, back_at)
    drain_s = (last_backlog_commit - back_at) if last_backlog_commit else None
    # Live: samples taken once every car was back (earlier ones waited in a car's queue while
    # it reconnected: backlog too), until the drain ended (at least 10 s of them).
    live_from = back_at + reconnect_s
    live = latency(
        services.dsn, live_from, max(last_backlog_commit or wall_drained, live_from + 10)
    )
    results |= {
        "cars": options.cars,
        "cars_reachable": reachable,
        "broker_client_limit": limit,
        "fleet_processes": options.processes,
        "gateway_instances": options.instances,
        "offline_s": options.offline_s,
        "connect_s": round(connected_s, 1),
        "reconnect_s": round(reconnect_s, 1),
        "backlog_rows": backlog_rows,
        "drain_s": None if drain_s is None else round(drain_s, 1),
        "queues_emptied": drained,
        "live_p50_ms": round(live.p50_ms, 1),
        "live_p99_ms": round(live.p99_ms, 1),
        "live_max_ms": round(live.max_ms, 1),
        "live_samples": live.rows,
        "gateway_rss_mb_before": round(rss_before, 1),
        "gateway_rss_mb_max": round(meter.gateway_rss_max, 1),
        "gateway_pending_max": round(meter.pending_max),
        "broker_rss_mb_max": round(meter.broker_rss_max, 1),
        "fleet_rss_mb_max": round(meter.fleet_rss_max, 1),
        "published": counted.published,
        "stored": counted.stored,
        "lost": counted.lost,
        "duplicated": counted.duplicated,
        "duplicates_in_tables": duplicates_anywhere(services.dsn),
        "left_in_car_queues": int(summary.get("queued", 0)),
        "sim_connect_failures": summary.get("connect_failures"),
        "sim_sessions": summary.get("sessions"),
        "sim_backlog_messages": summary.get("backlog_messages"),
        "sim_msgs_per_s": summary.get("msgs_per_s"),
    }
    return results


def _wait_until(wall: float, fleet: FleetProcess, meter: Meter, label: str) -> None:
    next_line = 0.0
    while (left := wall - time.time()) > 0:
        fleet.check()
        rss, pending = meter.sample(fleet)
        if time.monotonic() >= next_line:
            progress = fleet.progress
            connected = progress.connected if progress else 0
            queued = progress.queued if progress else 0
            say(
                f"  {label}: {left:5.0f} s left, connected {connected:,}, queued {queued:,}, "
                f"gateway RSS {rss:.0f} MB, pending {pending:,.0f}"
            )
            next_line = time.monotonic() + 15
        time.sleep(min(_TICK_S, max(left, 0.01)))


def _wait_reconnected(fleet: FleetProcess, meter: Meter, back_at: float, target: int) -> float:
    """Seconds from `back_at` until `target` cars are connected (or 600 s: then what it got)."""
    best = 0
    while time.time() - back_at < 600:
        fleet.check()
        meter.sample(fleet)
        progress = fleet.progress
        if progress is not None and progress.seen_wall > back_at:
            best = max(best, progress.connected)
            if progress.connected >= target:
                return progress.seen_wall - back_at
        time.sleep(0.2)
    say(f"  only {best:,} of {target:,} cars reconnected within 600 s")
    return time.time() - back_at


def _wait_drained(fleet: FleetProcess, meter: Meter, timeout_s: float, slack: int) -> bool:
    """Until a progress line says the cars' queues are (nearly) empty; False after timeout."""
    since = time.monotonic()
    deadline = since + timeout_s
    next_line = since + 15
    while time.monotonic() < deadline:
        fleet.check()
        rss, pending = meter.sample(fleet)
        progress = fleet.progress
        if progress is not None and progress.seen_at > since + 2 and progress.queued <= slack:
            return True
        if progress is not None and time.monotonic() >= next_line:
            say(
                f"  draining: connected {progress.connected:,}, queued {progress.queued:,}, "
                f"{progress.msgs_per_s:,.0f} msgs/s, gateway RSS {rss:.0f} MB, "
                f"pending {pending:,.0f}"
            )
            next_line = time.monotonic() + 15
        time.sleep(_TICK_S)
    return False


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    started = time.monotonic()
    with work_dir(options.work_dir, options.keep, "tgw-storm-") as work:
        say(f"work dir {work}; starting broker and database ...")
        services = FleetServices(
            work, timescaledb=storage_flag(options.storage), durable=options.durable
        )
        with services:
            results = run_storm(options, services, work)
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
