"""Ingest benchmark: cars -> Mosquitto -> `tgw gateway run` -> TimescaleDB, on this machine.

    python -m bench.ingest [options]          (or: make bench-ingest BENCH_ARGS="...")
    BENCH_SECONDS=20 python -m bench.ingest   (a short run; the default is 60)

Everything runs on this box in one run, in this order (docs/benchmarks.md explains why):

1. raw COPY: the gateway's own telemetry rows COPY'd straight into the table -> raw_copy_rows_per_s
2. raw broker: the same load to a plain paho subscriber that only counts -> raw_broker_msgs_per_s
3. gateway, maximum: `tgw gateway run --workers N`, offered as much as it takes, with the backlog
   at the broker bounded (closed loop) -> committed_msgs_per_s (after warm-up), CPU, RSS
4. gateway, latency: a steady rate (half the maximum unless --latency-rate) -> p50_ms, p99_ms,
   on a database that has caught up with the maximum phase's upkeep (VACUUM, CHECKPOINT)
5. database outage: PostgreSQL stopped under load; the gateway's RSS while messages pile up
   at the broker, and the catch-up once it is back
6. integrity: every message the broker accepted during 3-5 is stored exactly once

Progress goes to stdout as it runs, then a table, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench._copy import measure_raw_copy
from bench._gateway import GatewayProcess
from bench._load import check_payload
from bench._measure import committed_between, integrity, latency, settle
from bench._pgwaits import SessionSampler
from bench._phases import Load, Meters, Window, drain, drive, postgres_pids, say, tree
from bench._sink import CountingSubscriber, WireSubscriber
from bench._stack import BenchStack
from gateway.config import IngestSettings
from gateway.logconfig import configure_logging

__all__ = ["main"]

_DRAIN_TIMEOUT_S = 120.0
_MAX_WARMUP_S = 5.0
_SHORT_WARMUP_S = 3.0


@dataclass(frozen=True)
class Options:
    seconds: float
    cars: int
    publishers: int
    workers: int
    max_rate: float
    latency_rate: float | None
    target_rate: float
    backlog: int
    outage_s: float
    durable: bool
    work_dir: Path | None
    keep: bool
    profile: Path | None
    gateway_env: dict[str, str]

    @property
    def short_s(self) -> float:
        """The measured part of the raw broker and latency phases."""
        return max(8.0, self.seconds / 4)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Ingest benchmark on this machine; see docs/benchmarks.md.",
        epilog="Duration: BENCH_SECONDS (default 60) is the measured part of the maximum-rate "
        "phase; the other phases scale with it.",
    )
    parser.add_argument("--cars", type=int, default=5000, help="cars (MQTT connections)")
    parser.add_argument("--publishers", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes (--workers)")
    parser.add_argument(
        "--max-rate",
        type=float,
        default=40_000,
        help="msgs/s offered in the maximum-rate phases (with the backlog bound)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="msgs/s of the latency phase (default: half the gateway's measured maximum)",
    )
    parser.add_argument(
        "--target-rate",
        type=float,
        default=5000,
        help="also measure latency at this rate, if the gateway keeps up with it (0: skip)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=20_000,
        help="messages the load may run ahead of the consumer in the maximum-rate phases",
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=None,
        help="how long PostgreSQL is stopped under load (0: skip; default: scales with the run)",
    )
    parser.add_argument(
        "--no-durable",
        action="store_true",
        help="PostgreSQL without fsync/synchronous commit (default: durable, as in production)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the gateway workers with py-spy during the maximum phase into this dir",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="TGW_NAME=VALUE",
        help="a setting for the gateway under test, e.g. TGW_INGEST__BATCH_MAX_DELAY_MS=50 "
        "(repeatable; default: production defaults)",
    )
    args = parser.parse_args(argv)
    gateway_env: dict[str, str] = {}
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("TGW_"):
            parser.error(f"--gateway-env wants TGW_NAME=VALUE, got {item!r}")
        gateway_env[name] = value
    seconds = float(os.environ.get("BENCH_SECONDS", "60"))
    if seconds < 5:
        parser.error("BENCH_SECONDS must be at least 5")
    outage = args.outage_seconds if args.outage_seconds is not None else max(8.0, seconds / 6)
    return Options(
        seconds=seconds,
        cars=args.cars,
        publishers=args.publishers,
        workers=args.workers,
        max_rate=args.max_rate,
        latency_rate=args.latency_rate,
        target_rate=args.target_rate,
        backlog=args.backlog,
        outage_s=outage,
        durable=not args.no_durable,
        work_dir=args.work_dir,
        keep=args.keep,
        profile=args.profile,
        gateway_env=gateway_env,
    )


@contextmanager
def _work_dir(options: Options) -> Iterator[Path]:
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
        yield options.work_dir
        return
    path = Path(tempfile.mkdtemp(prefix="tgw-bench-"))
    try:
        yield path
    finally:
        if options.keep:
            say(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


class IngestBenchmark:
    """One run: the phases in order, filling `results`."""

    def __init__(self, options: Options, stack: BenchStack, work: Path) -> None:
        self.options = options
        self.stack = stack
        self.work = work
        self.results: dict[str, Any] = {}
        self.meters = Meters()
        self.meters.add("broker", tree(lambda: [stack.broker.pid] if stack.broker.pid else []))
        self.meters.add("postgres", tree(lambda: postgres_pids(stack)))
        self.meters.add("bench", lambda: [psutil.Process()])
        self.load = Load(stack, options.publishers)
        self.batch_size = IngestSettings().batch_max_messages
        # Set when the gateway starts: what it must store from then on.
        self.since = 0.0
        self.acked_before = 0

    def run(self) -> None:
        self.raw_copy()
        say(f"connecting {self.options.cars} cars from {self.options.publishers} processes ...")
        self.load.start()
        self.meters.add("load", tree(self.load.pids))
        try:
            self.raw_broker()
            self.gateway_phases()
        finally:
            self.load.stop()

    # 1
    def raw_copy(self) -> None:
        seconds = max(3.0, self.options.seconds / 12)
        say(f"raw COPY: batches of {self.batch_size} rows for {seconds:.0f} s ...")
        vins = [account.username for account in self.stack.car_accounts]
        rate, rows = measure_raw_copy(
            self.stack.dsn, vins, batch_size=self.batch_size, seconds=seconds
        )
        say(f"  raw COPY {rate:,.0f} rows/s ({rows:,} rows)")
        self.results["raw_copy_rows_per_s"] = round(rate)

    # 2
    def raw_broker(self) -> None:
        """Both plain subscribers, one after the other, as many processes as gateway workers."""
        paho = self._raw_broker("paho", CountingSubscriber)
        self.results["raw_broker_msgs_per_s"] = round(paho.rate())
        self.results["raw_broker_cpu_pct"] = _cpu_table(paho)
        wire = self._raw_broker("wire", WireSubscriber)
        self.results["raw_broker_wire_msgs_per_s"] = round(wire.rate())
        self.results["raw_broker_wire_cpu_pct"] = _cpu_table(wire)

    def _raw_broker(
        self, kind: str, subscriber_type: type[CountingSubscriber] | type[WireSubscriber]
    ) -> Window:
        options = self.options
        subscribers: list[CountingSubscriber | WireSubscriber] = []
        for i in range(options.workers):
            account = self.stack.add_subscriber(f"bench-{kind}-{i + 1}")
            subscribers.append(subscriber_type(account, f"bench-{kind}"))
            subscribers[-1].start()
        self.meters.add("subscriber", tree(lambda: [s.pid for s in subscribers if s.pid]))
        say(
            f"raw broker ({kind}): {options.workers} counting subscriber(s), "
            f"{options.short_s:.0f} s ..."
        )
        try:
            raw = drive(
                f"raw {kind}",
                self.load,
                self.meters,
                lambda: sum(s.received.value for s in subscribers),
                rate=options.max_rate,
                warmup_s=_SHORT_WARMUP_S,
                measure_s=options.short_s,
                backlog=options.backlog,
            )
            self.load.quiesce()
        finally:
            for subscriber in subscribers:
                subscriber.stop()
        say(f"  raw broker ({kind}) {raw.rate():,.0f} msgs/s")
        return raw

    # 3-6
    def gateway_phases(self) -> None:
        options = self.options
        accounts = self.stack.add_gateways(options.workers)
        broker = (self.stack.broker.host, self.stack.broker.port)
        gateway = GatewayProcess(
            accounts,
            broker,
            self.stack.dsn,
            self.work / "gateway.log",
            extra_env=options.gateway_env,
        )
        self.since = time.time()
        self.acked_before = self.load.acked
        say(f"gateway: tgw gateway run --workers {options.workers} ...")
        gateway.start()
        self.meters.add("gateway", gateway.processes)
        try:
            maximum = self.gateway_maximum(gateway)
            self.settle()
            rate = options.latency_rate or max(maximum / 2, 100.0)
            self.latency(gateway, rate, "")
            target = options.target_rate
            if target and abs(target - rate) > 0.1 * rate and target < maximum:
                self.latency(gateway, target, "_at_target")
            if options.outage_s > 0:
                self.outage(gateway, rate)
        finally:
            code = gateway.stop()
            say(f"gateway stopped (exit {code})")
        self.check_integrity()

    def _expected(self) -> int:
        """Messages the broker accepted since the gateway started: all must be stored."""
        return self.load.acked - self.acked_before - self.load.refused

    def _drain(self, gateway: GatewayProcess) -> float:
        self.load.quiesce()
        return drain(self.load, gateway.stored_telemetry, self._expected(), _DRAIN_TIMEOUT_S)

    # 3
    def gateway_maximum(self, gateway: GatewayProcess) -> float:
        options = self.options
        profiler = None
        if options.profile is not None:
            from bench._profile import PySpy  # noqa: PLC0415  # only with --profile

            profiler = PySpy(options.profile, gateway.worker_pids(), options.seconds + 10)
            profiler.start()
        say(f"gateway maximum: {_MAX_WARMUP_S:.0f} s warm-up, {options.seconds:.0f} s measured ...")
        before = gateway.batch_totals()
        sessions = SessionSampler(self.stack.dsn)
        sessions.start()
        top = drive(
            "gateway",
            self.load,
            self.meters,
            gateway.stored_telemetry,
            rate=options.max_rate,
            warmup_s=_MAX_WARMUP_S,
            measure_s=options.seconds,
            backlog=options.backlog,
            rss_of="gateway",
        )
        self.results["db_sessions_pct"] = sessions.stop()
        self.results |= _batches(before, gateway.batch_totals(), "")
        if profiler is not None:
            self.results["profile"] = profiler.finish()
        committed = committed_between(self.stack.dsn, self.since, top.start, top.end)
        maximum = committed / top.seconds
        # CPU per committed message, by part: barely moved by other jobs on the machine, so
        # it also says what two idle cores could do (`capacity_estimate_msgs_per_s`).
        per_msg = {
            name: round(1e6 * top.cpu_s.get(name, 0.0) / committed, 1) if committed else 0.0
            for name in ("gateway", "broker", "postgres", "load")
        }
        ours = sum(per_msg.values())
        cores = psutil.cpu_count() or 1
        self.results["cpu_us_per_msg"] = per_msg
        self.results["capacity_estimate_msgs_per_s"] = round(cores * 1e6 / ours) if ours else None
        self.results |= {
            "committed_msgs_per_s": round(maximum),
            "gateway_reported_msgs_per_s": round(top.rate()),
            "gateway_cpu_pct": round(top.cpu_pct("gateway")),
            "gateway_rss_mb": round(top.max_rss_mb, 1),
            "gateway_rss_mb_per_process": round(top.max_rss_mb_per_process, 1),
            "cpu_pct": _cpu_table(top),
        }
        say(f"  committed {maximum:,.0f} msgs/s (database), gateway says {top.rate():,.0f}")
        self._drain(gateway)
        return maximum

    def settle(self) -> None:
        """The maximum phase's upkeep, done before the latency window (bench._measure.settle)."""
        say("settling: VACUUM (ANALYZE) and CHECKPOINT after the maximum phase ...")
        self.results["settle_s"] = round(settle(self.stack.dsn), 1)

    # 4
    def latency(self, gateway: GatewayProcess, rate: float, suffix: str) -> None:
        measure_s = self.options.short_s
        say(f"latency: {rate:,.0f} msgs/s, {_SHORT_WARMUP_S:.0f} s warm-up, {measure_s:.0f} s ...")
        before = gateway.batch_totals()
        sessions = SessionSampler(self.stack.dsn)
        sessions.start()
        steady = drive(
            "latency",
            self.load,
            self.meters,
            gateway.stored_telemetry,
            rate=rate,
            warmup_s=_SHORT_WARMUP_S,
            measure_s=measure_s,
            backlog=None,
            rss_of="gateway",
        )
        self.results[f"db_sessions_pct_latency{suffix}"] = sessions.stop()
        self.results[f"cpu_pct_latency{suffix}"] = _cpu_table(steady)
        self.results |= _batches(before, gateway.batch_totals(), f"_latency{suffix}")
        self._drain(gateway)
        lag = latency(self.stack.dsn, steady.start, steady.end)
        say(f"  p50 {lag.p50_ms:.1f} ms, p99 {lag.p99_ms:.1f} ms over {lag.rows:,} samples")
        self.results |= {
            f"latency_rate_msgs_per_s{suffix}": round(rate),
            f"p50_ms{suffix}": round(lag.p50_ms, 1),
            f"p99_ms{suffix}": round(lag.p99_ms, 1),
            f"max_ms{suffix}": round(lag.max_ms, 1),
            f"latency_samples{suffix}": lag.rows,
            f"latency_gateway_cpu_pct{suffix}": round(steady.cpu_pct("gateway")),
        }

    # 5
    def outage(self, gateway: GatewayProcess, rate: float) -> None:
        lead_s, down_s = 2.0, self.options.outage_s
        postgres = self.stack.postgres
        state = {"down": False, "up": False}

        def during(elapsed: float) -> None:
            if not state["down"] and elapsed >= lead_s:
                say("  stopping PostgreSQL")
                postgres.stop()
                state["down"] = True
            elif state["down"] and not state["up"] and elapsed >= lead_s + down_s:
                say("  starting PostgreSQL")
                postgres.start()
                state["up"] = True

        say(f"outage: {rate:,.0f} msgs/s, PostgreSQL down for {down_s:.0f} s ...")
        try:
            outage = drive(
                "outage",
                self.load,
                self.meters,
                gateway.stored_telemetry,
                rate=rate,
                warmup_s=0,
                measure_s=lead_s + down_s + 2,
                backlog=None,
                rss_of="gateway",
                during=during,
            )
        finally:
            if not postgres.running:
                postgres.start()
        self.load.quiesce()
        backlog = self._expected() - gateway.stored_telemetry()
        catch_up = self._drain(gateway)
        say(
            f"  max RSS {outage.max_rss_mb:.0f} MB while down; "
            f"{backlog:,} messages caught up in {catch_up:.1f} s"
        )
        self.results |= {
            "outage_seconds": down_s,
            "outage_rss_mb": round(outage.max_rss_mb, 1),
            "outage_rss_mb_per_process": round(outage.max_rss_mb_per_process, 1),
            "outage_backlog_msgs": backlog,
            "outage_catch_up_s": round(catch_up, 1),
        }

    # 6
    def check_integrity(self) -> None:
        check = integrity(self.stack.dsn, self.since)
        expected = self._expected()
        self.results |= {
            "stored_rows": check.rows,
            "lost": max(expected - check.distinct_keys, 0),
            "duplicates": check.rows - check.distinct_keys,
        }
        say(
            f"integrity: {expected:,} accepted by the broker, {check.distinct_keys:,} stored, "
            f"{check.rows - check.distinct_keys} duplicates"
        )


def _batches(
    before: tuple[float, float, float], after: tuple[float, float, float], suffix: str
) -> dict[str, float]:
    """Mean batch size and write time (the gateway's own histograms) over a phase."""
    batches, messages, seconds = (a - b for a, b in zip(after, before, strict=True))
    if not batches:
        return {}
    return {
        f"batch_msgs_mean{suffix}": round(messages / batches),
        f"batch_write_ms_mean{suffix}": round(1000 * seconds / batches, 1),
    }


def _cpu_table(window: Window) -> dict[str, int]:
    return {name: round(window.cpu_pct(name)) for name in window.cpu_s}


_TABLE = (
    ("committed_msgs_per_s", "gateway, sustained after warm-up (from database commit times)"),
    ("raw_broker_msgs_per_s", "same load to plain counting paho subscribers"),
    ("ratio_vs_broker", "committed / raw broker"),
    ("raw_broker_wire_msgs_per_s", "same load to minimal socket-level subscribers"),
    ("ratio_vs_broker_wire", "committed / raw broker (wire)"),
    ("raw_copy_rows_per_s", "same rows COPY'd straight into telemetry"),
    ("latency_rate_msgs_per_s", "steady rate of the latency phase (half the maximum)"),
    ("p50_ms", "publish to commit, at that rate"),
    ("p99_ms", "publish to commit, at that rate"),
    ("latency_rate_msgs_per_s_at_target", "the target's rate"),
    ("p50_ms_at_target", "publish to commit, at the target's rate"),
    ("p99_ms_at_target", "publish to commit, at the target's rate"),
    ("gateway_cpu_pct", "all gateway processes, % of one core, maximum phase"),
    ("capacity_estimate_msgs_per_s", "all cores / CPU per message of gateway+broker+db+load"),
    ("gateway_rss_mb", "all gateway processes together, max RSS, maximum phase"),
    ("gateway_rss_mb_per_process", "largest single gateway process, maximum phase"),
    ("outage_rss_mb", "all gateway processes together, max RSS, database down"),
    ("outage_rss_mb_per_process", "largest single gateway process, database down"),
    ("outage_catch_up_s", "backlog drained after the database came back"),
    ("lost", "accepted by the broker, not stored"),
    ("duplicates", "stored more than once"),
)


def table(results: dict[str, Any]) -> str:
    """The main figures for people; the JSON line has them all."""
    width = max(len(name) for name, _ in _TABLE)
    lines = [f"{'figure':<{width}}  {'value':>10}  meaning", "-" * (width + 76)]
    for name, meaning in _TABLE:
        if name in results:
            value = results[name]
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            lines.append(f"{name:<{width}}  {shown:>10}  {meaning}")
    return "\n".join(lines)


def run(options: Options) -> dict[str, Any]:
    """Set up, run every phase, tear down; return the figures."""
    payload_bytes = check_payload()
    with _work_dir(options) as work:
        say(f"work dir {work}; starting broker and database ({options.cars} cars) ...")
        with BenchStack(work, cars=options.cars, durable=options.durable) as stack:
            benchmark = IngestBenchmark(options, stack, work)
            benchmark.run()
            results = benchmark.results
            results["timescaledb"] = stack.timescaledb
    broker = results.get("raw_broker_msgs_per_s") or 0
    wire = results.get("raw_broker_wire_msgs_per_s") or 0
    committed = results.get("committed_msgs_per_s") or 0
    return results | {
        "ratio_vs_broker": round(committed / broker, 3) if broker else None,
        "ratio_vs_broker_wire": round(committed / wire, 3) if wire else None,
        "payload_bytes": payload_bytes,
        "cars": options.cars,
        "workers": options.workers,
        "publishers": options.publishers,
        "bench_seconds": options.seconds,
        "durable": options.durable,
        "gateway_env": options.gateway_env,
        "cpus": psutil.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    started = time.monotonic()
    results = run(options)
    results["wall_seconds"] = round(time.monotonic() - started)
    say("")
    say(table(results))
    say(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
