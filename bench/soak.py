"""Soak: the gateway at half its maximum rate for 30 minutes; memory and latency must stay flat.

    python -m bench.soak [options]             (or: make soak BENCH_ARGS="...")
    BENCH_SECONDS=300 python -m bench.soak     (a 5-minute soak; the default is 1800)

1. The ingest benchmark's set-up (bench/_stack.py, bench/_load.py): private Mosquitto and
   durable PostgreSQL/TimescaleDB, --cars car connections from --publishers processes, and
   `tgw gateway run --workers N` as a subprocess with production defaults.
2. Maximum: offered more than it takes (closed loop, at most --backlog messages ahead),
   5 s warm-up, --max-seconds measured: the committed rate from the database's commit times;
   then that phase's upkeep (VACUUM ANALYZE, CHECKPOINT) before the soak starts.
   --rate skips this and soaks at that rate instead.
3. Soak: a steady rate of half that maximum for BENCH_SECONDS, cut into --window windows. Per
   window: the gateway's largest RSS (all its processes, sampled ten times a second) and the
   publish-to-commit latency p50/p99 of the samples published in it (commit timestamps).
4. Trends: least-squares slopes over the windows after the first (warm-up): RSS in MB per hour,
   p50/p99 in ms per hour; and the first and last windows side by side.
5. Integrity: every message the broker acknowledged during the soak stored exactly once.

Progress goes to stdout, then a table of the windows, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench._gateway import GatewayProcess
from bench._harness import bench_seconds, finish, stop_on_sigterm, table, work_dir
from bench._measure import committed_between, integrity, latency, settle
from bench._phases import Load, Meters, drain, drive, postgres_pids, say, tree
from bench._stack import BenchStack
from gateway.logconfig import configure_logging

__all__ = ["main", "slope_per_hour"]

_SAMPLE_S = 0.1
_MAX_WARMUP_S = 5.0


@dataclass(frozen=True)
class Options:
    seconds: float
    window_s: float
    cars: int
    publishers: int
    workers: int
    rate: float | None
    max_seconds: float
    backlog: int
    durable: bool
    work_dir: Path | None
    keep: bool


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak at half the maximum rate; memory and latency trends.",
        epilog="BENCH_SECONDS (default 1800) is the length of the soak.",
    )
    parser.add_argument("--cars", type=int, default=2000, help="car connections [2000]")
    parser.add_argument("--publishers", type=int, default=2, help="load processes [2]")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes [2]")
    parser.add_argument("--rate", type=float, default=None, help="msgs/s (default: max / 2)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="maximum phase [30]")
    parser.add_argument("--window", type=float, default=None, help="seconds per window")
    parser.add_argument("--backlog", type=int, default=20_000, help="closed-loop bound")
    parser.add_argument("--no-durable", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    seconds = bench_seconds(1800.0, minimum=30.0)
    window = args.window or max(10.0, seconds / 30)
    return Options(
        seconds=seconds,
        window_s=window,
        cars=args.cars,
        publishers=args.publishers,
        workers=args.workers,
        rate=args.rate,
        max_seconds=args.max_seconds,
        backlog=args.backlog,
        durable=not args.no_durable,
        work_dir=args.work_dir,
        keep=args.keep,
    )


def slope_per_hour(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of `values` over `times_s`, per hour (0 with fewer than 2 points)."""
    if len(values) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times_s), statistics.fmean(values)
    var = sum((t - mean_t) ** 2 for t in times_s)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in zip(times_s, values, strict=True))
    return cov / var * 3600


@dataclass
class SoakWindow:
    start: float
    end: float
    rss_mb: float = 0.0
    committed: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    samples: int = 0


class Soak:
    def __init__(self, options: Options, stack: BenchStack, work: Path) -> None:
        self.options = options
        self.stack = stack
        self.work = work
        self.load = Load(stack, options.publishers)
        self.meters = Meters()
        self.meters.add("broker", tree(lambda: [stack.broker.pid] if stack.broker.pid else []))
        self.meters.add("postgres", tree(lambda: postgres_pids(stack)))
        self.results: dict[str, Any] = {}
        self.windows: list[SoakWindow] = []

    def run(self) -> None:
        options = self.options
        say(f"connecting {options.cars:,} cars from {options.publishers} processes ...")
        self.load.start()
        self.meters.add("load", tree(self.load.pids))
        accounts = self.stack.add_gateways(options.workers)
        broker = (self.stack.broker.host, self.stack.broker.port)
        gateway = GatewayProcess(accounts, broker, self.stack.dsn, self.work / "gateway.log")
        since = time.time()
        acked_before = self.load.acked
        say(f"gateway: tgw gateway run --workers {options.workers} ...")
        gateway.start()
        self.meters.add("gateway", gateway.processes)
        try:
            rate = options.rate or self.maximum(gateway, since) / 2
            if not options.rate:
                say("settling: VACUUM (ANALYZE) and CHECKPOINT after the maximum phase ...")
                self.results["settle_s"] = round(settle(self.stack.dsn), 1)
            self.soak(gateway, rate)
            self.load.quiesce()
            expected = self.load.acked - acked_before - self.load.refused
            drain(self.load, gateway.stored_telemetry, expected, 300.0)
        finally:
            self.load.stop()
            code = gateway.stop()
            say(f"gateway stopped (exit {code})")
        check = integrity(self.stack.dsn, since)
        self.results |= {
            "stored_rows": check.rows,
            "lost": max(expected - check.distinct_keys, 0),
            "duplicates": check.rows - check.distinct_keys,
        }
        self.trends()

    def maximum(self, gateway: GatewayProcess, since: float) -> float:
        options = self.options
        say(f"maximum: {_MAX_WARMUP_S:.0f} s warm-up, {options.max_seconds:.0f} s measured ...")
        top = drive(
            "maximum",
            self.load,
            self.meters,
            gateway.stored_telemetry,
            rate=40_000,
            warmup_s=_MAX_WARMUP_S,
            measure_s=options.max_seconds,
            backlog=options.backlog,
            rss_of="gateway",
        )
        committed = committed_between(self.stack.dsn, since, top.start, top.end)
        maximum = committed / top.seconds
        self.load.set_rate(0)
        self.load.quiesce()
        say(f"  committed {maximum:,.0f} msgs/s; letting the backlog drain ...")
        time.sleep(5.0)
        self.results |= {"max_msgs_per_s": round(maximum), "max_rss_mb": round(top.max_rss_mb, 1)}
        return maximum

    def soak(self, gateway: GatewayProcess, rate: float) -> None:
        options = self.options
        count = max(1, round(options.seconds / options.window_s))
        say(f"soak: {rate:,.0f} msgs/s for {options.seconds:.0f} s ({count} windows) ...")
        self.load.allow(10**15)
        self.load.set_rate(rate)
        stored_before = gateway.stored_telemetry()
        started = time.time()
        for index in range(count):
            window = SoakWindow(start=time.time(), end=0.0)
            finish_at = started + (index + 1) * options.window_s
            while time.time() < finish_at:
                self.load.check()
                self.meters.sample()
                window.rss_mb = max(window.rss_mb, self.meters.rss_mb("gateway")[0])
                time.sleep(_SAMPLE_S)
            window.end = time.time()
            stored = gateway.stored_telemetry()
            window.committed = stored - stored_before
            stored_before = stored
            self.windows.append(window)
            say(
                f"  window {index + 1:3}/{count}: gateway RSS {window.rss_mb:6.1f} MB, "
                f"{window.committed / (window.end - window.start):8,.0f} msgs/s stored"
            )
        self.results |= {"soak_rate_msgs_per_s": round(rate), "soak_seconds": options.seconds}

    def trends(self) -> None:
        for window in self.windows:
            lag = latency(self.stack.dsn, window.start, window.end)
            window.p50_ms, window.p99_ms, window.samples = lag.p50_ms, lag.p99_ms, lag.rows
        steady = self.windows[1:] if len(self.windows) > 2 else self.windows
        t0 = self.windows[0].start if self.windows else 0.0
        times = [(w.start + w.end) / 2 - t0 for w in steady]
        first, last = steady[0], steady[-1]
        self.results |= {
            "windows": len(self.windows),
            "window_s": self.options.window_s,
            "rss_mb_first": round(first.rss_mb, 1),
            "rss_mb_last": round(last.rss_mb, 1),
            "rss_mb_max": round(max(w.rss_mb for w in steady), 1),
            "rss_slope_mb_per_h": round(slope_per_hour(times, [w.rss_mb for w in steady]), 2),
            "p50_ms_first": round(first.p50_ms, 1),
            "p50_ms_last": round(last.p50_ms, 1),
            "p99_ms_first": round(first.p99_ms, 1),
            "p99_ms_last": round(last.p99_ms, 1),
            "p50_slope_ms_per_h": round(slope_per_hour(times, [w.p50_ms for w in steady]), 2),
            "p99_slope_ms_per_h": round(slope_per_hour(times, [w.p99_ms for w in steady]), 2),
            "p99_ms_median": round(statistics.median(w.p99_ms for w in steady), 1),
            "series": [
                {
                    "t_s": round(w.start - t0),
                    "rss_mb": round(w.rss_mb, 1),
                    "p50_ms": round(w.p50_ms, 1),
                    "p99_ms": round(w.p99_ms, 1),
                    "msgs_per_s": round(w.committed / (w.end - w.start)),
                }
                for w in self.windows
            ],
        }

    def table(self) -> str:
        rows = [
            [f"{round(w.start - self.windows[0].start):,} s", f"{w.rss_mb:.1f}",
             f"{w.p50_ms:.1f}", f"{w.p99_ms:.1f}", round(w.committed / (w.end - w.start))]
            for w in self.windows
        ]  # fmt: skip
        return table(["window", "gateway RSS MB", "p50 ms", "p99 ms", "msgs/s"], rows)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    stop_on_sigterm()
    started = time.monotonic()
    with work_dir(options.work_dir, options.keep, "tgw-soak-") as work:
        say(f"work dir {work}; starting broker and database ({options.cars:,} cars) ...")
        with BenchStack(work, cars=options.cars, durable=options.durable) as stack:
            soak = Soak(options, stack, work)
            soak.run()
            results = soak.results | {"timescaledb": stack.timescaledb}
    say("")
    say(soak.table())
    results |= {
        "cars": options.cars,
        "workers": options.workers,
        "publishers": options.publishers,
        "durable": options.durable,
        "cpus": psutil.cpu_count(),
        "wall_seconds": round(time.monotonic() - started),
    }
    finish(results)
    return 0 if results["lost"] == results["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
