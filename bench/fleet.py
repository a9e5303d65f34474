"""Fleet benchmark: N simulated cars (`tgw sim fleet`) against a private Mosquitto, on this machine.

    python -m bench.fleet [options]          (or: make bench-fleet BENCH_ARGS="...")
    BENCH_SECONDS=20 python -m bench.fleet   (a short run; the default is 60)
    python -m bench.fleet --vehicles 20000   (20,000 connections: as many as one broker holds)

1. A private Mosquitto from the repository's mosquitto.conf (ACL file, dynamic-security plugin),
   with the fleet's car accounts provisioned offline; a plain subscriber (bench/_fleet_sink.py:
   one socket, QoS 1) on every car's telemetry, events and status, counting what arrives.
2. `tgw sim fleet --vehicles N` over --processes worker processes: every car a full in-car unit
   (CAN frames encoded and decoded with its model's profile, SQLite store and forward, command
   handling) with its own MQTT 5 connection and identity, on the issue's duty cycle: 35 % of
   the cars driving and reporting every second, the parked ones every 60 s (about 3,600
   messages/s for 10,000 cars). Cars connect at --connect-rate per second (a token bucket).
3. Once every car is connected (or the broker holds no more), a short warm-up, then
   BENCH_SECONDS of measurement: messages received by the subscriber, the CPU time of every
   simulator process (psutil, % of one core), of the broker, the subscriber and this process,
   and of everything else the machine ran meanwhile (`other`: another benchmark or test run
   on this 2-core machine skews every figure, and this says by how much); the simulator's
   RSS (all its processes together, sampled through the window, the largest total).

Progress goes to stdout as it runs, then a table, then ONE JSON object as the last line.

This machine's limit: one process may open at most `ulimit -Hn` files (20,000 here, and it
cannot be raised without CAP_SYS_RESOURCE). Mosquitto needs 6 of them for itself and one per
connection, so one broker holds at most 19,994 clients, the subscriber among them: of 20,000
cars, at most 19,993 can be connected at once. The run reports how many were, and says so.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench._fleet import FleetOptions, FleetProcess, FleetProgressLine
from bench._fleet_broker import MOSQUITTO_OWN_FILES, FleetBroker
from bench._fleet_sink import COUNTED_KINDS, UplinkCounter
from bench._harness import bench_seconds, finish, stop_on_sigterm, work_dir
from bench._phases import Meters, say
from bench._profile import PySpy
from gateway.logconfig import configure_logging
from schemas import TopicKind

__all__ = ["main"]

_DEFAULT_SECONDS = 60.0
_CARS_PER_PROCESS = 10_000  # one event loop; also well inside one process's file limit
_PROGRESS_S = 2.0
_STALL_S = 60.0  # the wait for connections ends when no car connected for this long
_CONNECT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Options:
    vehicles: int
    processes: int
    connect_rate: float
    connect_concurrency: int | None
    seconds: float
    warmup_s: float
    seed: int
    driving_share: float
    driving_interval_s: float
    parked_interval_s: float
    profile: bool
    work_dir: Path | None
    keep: bool

    @property
    def expected_msgs_per_s(self) -> float:
        """Telemetry messages per second the duty cycle asks for (events come on top)."""
        share = self.driving_share
        return self.vehicles * (
            share / self.driving_interval_s + (1 - share) / self.parked_interval_s
        )


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Simulated fleet against a private broker on this machine: connect time, "
        "message rate, simulator CPU and memory (see docs/device_sim.md).",
        epilog="Duration: BENCH_SECONDS (default 60) is the measured part, after every car "
        "connected and a warm-up; BENCH_SECONDS=20 is a short run.",
    )
    parser.add_argument(
        "--vehicles", "--cars", type=int, default=10_000, help="simulated cars [10000]"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help=f"simulator worker processes [one per {_CARS_PER_PROCESS:,} cars, at least 2 "
        "above 5,000]",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=1000.0,
        help="cars taking their turn to connect per second, the whole fleet [1000]",
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=None,
        help="connection handshakes in progress at once, the whole fleet [tgw sim fleet's]",
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds after the last connect [5]"
    )
    parser.add_argument("--seed", type=int, default=1, help="the fleet's seed [1]")
    parser.add_argument(
        "--driving-share", type=float, default=0.35, help="share of cars driving [0.35]"
    )
    parser.add_argument(
        "--driving-interval", type=float, default=1.0, help="seconds between samples, driving [1]"
    )
    parser.add_argument(
        "--parked-interval", type=float, default=60.0, help="seconds between samples, parked [60]"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the simulator processes with py-spy during the measurement",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep files here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    args = parser.parse_args(argv)
    if args.vehicles < 1:
        parser.error("--vehicles must be at least 1")
    # Two processes from 5,000 cars: while the fleet connects, the cars already connected
    # drive and publish, and one event loop is CPU-bound before the ramp is over.
    processes = args.processes or max(
        math.ceil(args.vehicles / _CARS_PER_PROCESS), 2 if args.vehicles > 5_000 else 1
    )
    if processes < 1:
        parser.error("--processes must be at least 1")
    return Options(
        vehicles=args.vehicles,
        processes=processes,
        connect_rate=args.connect_rate,
        connect_concurrency=args.connect_concurrency,
        seconds=bench_seconds(_DEFAULT_SECONDS),
        warmup_s=args.warmup,
        seed=args.seed,
        driving_share=args.driving_share,
        driving_interval_s=args.driving_interval,
        parked_interval_s=args.parked_interval,
        profile=args.profile,
        work_dir=args.work_dir,
        keep=args.keep,
    )


class FleetBenchmark:
    """One run: broker, subscriber, fleet; connect, warm up, measure, stop."""

    def __init__(self, options: Options, broker: FleetBroker, work: Path) -> None:
        self.options = options
        self.broker = broker
        self.work = work
        self.results: dict[str, Any] = {}
        self.subscriber = UplinkCounter(broker.subscriber)
        self.fleet = FleetProcess(
            FleetOptions(
                cars=options.vehicles,
                seed=options.seed,
                credentials=broker.credentials,
                queue_dir=work / "queues",
                processes=options.processes,
                driving_interval_s=options.driving_interval_s,
                parked_interval_s=options.parked_interval_s,
                driving_share=options.driving_share,
                connect_rate=options.connect_rate,
                connect_concurrency=options.connect_concurrency,
                progress_every_s=1.0,
            ),
            (broker.broker.host, broker.broker.port),
            work / "fleet.log",
        )
        self.meters = Meters()
        self.meters.add("sim", self.fleet.processes)
        self.meters.add("broker", lambda: _processes(broker.broker.pid))
        self.meters.add("subscriber", lambda: _processes(self.subscriber.pid))
        self.meters.add("bench", lambda: [psutil.Process()])

    @property
    def holdable(self) -> int:
        """Cars the broker can hold beside the subscriber."""
        return min(self.options.vehicles, self.broker.client_limit - 1)

    def run(self) -> None:
        options = self.options
        self.subscriber.start()
        say(
            f"fleet: {options.vehicles:,} cars in {options.processes} process(es), "
            f"expecting ~{options.expected_msgs_per_s:,.0f} telemetry msgs/s ..."
        )
        if self.holdable < options.vehicles:
            say(
                f"  note: this broker holds at most {self.broker.client_limit:,} clients "
                f"(open-file limit {self.broker.file_limit:,}, {MOSQUITTO_OWN_FILES} of them its "
                f"own), the subscriber among them: at most {self.holdable:,} cars"
            )
        self.fleet.start()
        try:
            self._connect()
            self._measure()
        finally:
            summary = self.fleet.stop()
        self.results["fleet_summary"] = {
            key: summary.get(key)
            for key in (
                "connect_s",
                "msgs_published",
                "samples",
                "events",
                "sessions",
                "connect_failures",
                "queued",
                "overflow_dropped",
                "publish_refused",
                "gc_cpu_s",
            )
            if key in summary
        }
        if summary.get("connect_s") is not None:
            # The fleet's own clock: from its first car's turn, exact (progress lines: 1 s).
            self.results["connect_s"] = summary["connect_s"]

    def _connect(self) -> None:
        options = self.options
        say(f"connecting (--connect-rate {options.connect_rate:g}) ...")
        started = time.monotonic()
        last_count, last_change = -1, started
        next_line = started
        progress: FleetProgressLine | None = None
        while True:
            self.fleet.check()
            now = time.monotonic()
            progress = self.fleet.progress
            connected = progress.connected if progress is not None else 0
            if connected != last_count:
                last_count, last_change = connected, now
            if now >= next_line:
                self._progress_line("connect", progress, now - started)
                next_line = now + _PROGRESS_S
            if connected >= self.holdable:
                break
            if now - last_change > _STALL_S or now - started > _CONNECT_TIMEOUT_S:
                say(f"  connections stalled at {connected:,} of {options.vehicles:,}")
                break
            time.sleep(0.1)
        wall = time.monotonic() - self.fleet.started_at
        self.results["connect_wall_s"] = round(wall, 1)
        if progress is not None:
            # Progress lines come every second: the first one with everyone connected.
            self.results["connect_s"] = progress.elapsed_s
            self.results["connected_at_start"] = progress.connected
        say(
            f"  {last_count:,} connected; {wall:.1f} s since the fleet process started "
            "(building the cars included)"
        )

    def _measure(self) -> None:
        options = self.options
        say(f"warm-up {options.warmup_s:.0f} s, then {options.seconds:.0f} s measured ...")
        time.sleep(options.warmup_s)
        profiler = self._profiler()
        started = time.monotonic()
        cpu_start = self.meters.sample()
        received_start = {kind: self.subscriber.count(kind) for kind in COUNTED_KINDS}
        published_start = self._published()
        sim_rss = 0.0
        next_line = started + _PROGRESS_S
        while (now := time.monotonic()) < started + options.seconds:
            self.fleet.check()
            self.meters.sample()
            sim_rss = max(sim_rss, self.meters.rss_mb("sim")[0])
            if now >= next_line:
                self._progress_line("measure", self.fleet.progress, now - started)
                next_line = now + _PROGRESS_S
            time.sleep(0.5)
        cpu_end = self.meters.sample()
        seconds = time.monotonic() - started
        sim_rss = max(sim_rss, self.meters.rss_mb("sim")[0])
        progress = self.fleet.progress
        if profiler is not None:
            self.results["profile"] = profiler.finish()
        cpu = {name: cpu_end[name] - cpu_start.get(name, 0.0) for name in cpu_end}
        ours = sum(value for name, value in cpu.items() if name != "machine")
        cpu["other"] = max(cpu["machine"] - ours, 0.0)
        cpu_pct = {name: round(100 * value / seconds, 1) for name, value in cpu.items()}
        received = {
            kind: self.subscriber.count(kind) - received_start.get(kind, 0)
            for kind in COUNTED_KINDS
        }
        uplink = received[TopicKind.TELEMETRY] + received[TopicKind.EVENTS]
        connected = progress.connected if progress is not None else 0
        per_thousand = max(connected, 1) / 1000
        self.results |= {
            "vehicles": options.vehicles,
            "connected": connected,
            "msgs_per_s": round(uplink / seconds, 1),
            "telemetry_msgs_per_s": round(received[TopicKind.TELEMETRY] / seconds, 1),
            "event_msgs_per_s": round(received[TopicKind.EVENTS] / seconds, 1),
            "status_msgs": received[TopicKind.STATUS],
            "published_msgs_per_s": round((self._published() - published_start) / seconds, 1),
            "sim_cpu_pct": cpu_pct["sim"],
            "sim_rss_mb": round(sim_rss, 1),
            "cpu_pct_per_1000_cars": round(cpu_pct["sim"] / per_thousand, 2),
            "rss_mb_per_1000_cars": round(sim_rss / (options.vehicles / 1000), 1),
            "sim_cpu_us_per_msg": round(1e6 * cpu["sim"] / uplink, 1) if uplink else None,
            "broker_cpu_pct": cpu_pct["broker"],
            "other_cpu_pct": cpu_pct["other"],
            "cpu_pct": cpu_pct,
            "measured_s": round(seconds, 1),
        }
        say(
            f"  received {uplink / seconds:,.0f} msgs/s; simulator {cpu_pct['sim']:.0f} % of a "
            f"core, {sim_rss:,.0f} MB; other load on the machine {cpu_pct['other']:.0f} %"
        )

    def _published(self) -> int:
        progress = self.fleet.progress
        return progress.messages if progress is not None else 0

    def _progress_line(
        self, phase: str, progress: FleetProgressLine | None, elapsed: float
    ) -> None:
        received = self.subscriber.uplink
        if progress is None:
            say(f"  {phase:<8} {elapsed:5.0f} s  (fleet starting: building cars)")
            return
        say(
            f"  {phase:<8} {elapsed:5.0f} s  connected {progress.connected:>6,}/{progress.cars:,}"
            f"  published {progress.msgs_per_s:7,.0f}/s  received {received:>9,}"
            f"  sim cpu {progress.cpu_pct:5.1f} %"
        )

    def _profiler(self) -> _Profiler | None:
        if not self.options.profile:
            return None
        pids = [process.pid for process in self.fleet.processes()]
        profiler = _Profiler(self.work / "profile", pids, self.options.seconds)
        profiler.start()
        return profiler


class _Profiler:
    """py-spy over the simulator processes: where their time goes, by function."""

    def __init__(self, out_dir: Path, pids: list[int], seconds: float) -> None:
        self._spy = PySpy(out_dir, pids, seconds)

    def start(self) -> None:
        self._spy.start()

    def finish(self) -> dict[str, object]:
        files = self._spy.finish().get("files", [])
        assert isinstance(files, list)
        return profile_summary([Path(name) for name in files if Path(name).exists()])


def profile_summary(raw_files: list[Path], top: int = 25) -> dict[str, object]:
    """Self and inclusive shares (% of samples) of the busiest functions in py-spy raw files."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue  # an incomplete last line
            count = int(count_text)
            frames = [_SITE.sub("(", frame) for frame in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return {"samples": 0}

    def shares(counter: collections.Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(top)}

    return {"samples": total, "self_pct": shares(own), "inclusive_pct": shares(inclusive)}


_SITE = re.compile(r"\(/[^()]*?/(site-packages|lib/python3\.\d+|work/main)/")


def _processes(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        return [psutil.Process(pid)]
    except psutil.Error:
        return []


_TABLE = (
    ("vehicles", "cars asked for"),
    ("connected", "cars connected during the measurement"),
    ("connect_s", "until every car had connected once (fleet's clock, after building)"),
    ("connect_wall_s", "from starting the fleet process (building included)"),
    ("msgs_per_s", "telemetry + events received by the subscriber, after warm-up"),
    ("expected_msgs_per_s", "telemetry the duty cycle asks for"),
    ("sim_cpu_pct", "all simulator processes, % of one core"),
    ("sim_rss_mb", "all simulator processes together, largest RSS"),
    ("cpu_pct_per_1000_cars", "sim_cpu_pct per 1,000 connected cars"),
    ("rss_mb_per_1000_cars", "sim_rss_mb per 1,000 cars"),
    ("sim_cpu_us_per_msg", "simulator CPU per message received"),
    ("broker_cpu_pct", "Mosquitto, % of one core"),
    ("other_cpu_pct", "everything else the machine ran meanwhile, % of one core"),
)


def results_table(results: dict[str, Any]) -> str:
    """The main figures for people; the JSON line has them all."""
    width = max(len(name) for name, _ in _TABLE)
    lines = [f"{'figure':<{width}}  {'value':>10}  meaning", "-" * (width + 80)]
    for name, meaning in _TABLE:
        value = results.get(name)
        if value is not None:
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            lines.append(f"{name:<{width}}  {shown:>10}  {meaning}")
    return "\n".join(lines)


def run(options: Options) -> dict[str, Any]:
    """Set up, run, tear down; return the figures."""
    with work_dir(options.work_dir, options.keep, "tgw-bench-fleet-") as work:
        say(f"work dir {work}; starting the broker with {options.vehicles:,} car accounts ...")
        with FleetBroker(work, options.vehicles, options.seed) as broker:
            benchmark = FleetBenchmark(options, broker, work)
            try:
                benchmark.run()
            finally:
                benchmark.subscriber.stop()
            results = benchmark.results
            results["broker_client_limit"] = broker.client_limit
            if benchmark.holdable < options.vehicles:
                results["note"] = (
                    f"one Mosquitto holds at most {broker.client_limit} clients here (open-file "
                    f"limit {broker.file_limit}); with the subscriber, at most "
                    f"{benchmark.holdable} of {options.vehicles} cars"
                )
    return results | {
        "processes": options.processes,
        "connect_rate": options.connect_rate,
        "connect_concurrency": options.connect_concurrency,
        "expected_msgs_per_s": round(options.expected_msgs_per_s),
        "driving_share": options.driving_share,
        "bench_seconds": options.seconds,
        "cpus": psutil.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    stop_on_sigterm()
    started = time.monotonic()
    results = run(options)
    results["wall_seconds"] = round(time.monotonic() - started)
    say("")
    say(results_table(results))
    finish(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
