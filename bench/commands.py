"""Commands benchmark: operator -> API -> gateway -> broker -> car -> back, on this machine.

    python -m bench.commands [options]          (or: make bench-commands BENCH_ARGS="...")
    BENCH_SECONDS=20 python -m bench.commands   (a short run; the default is 60)

Real services throughout: a private Mosquitto and a durable PostgreSQL (bench._stack),
`tgw gateway run --workers N` with a signing key, and device_sim's in-car units (bench._cars),
each with its own broker account, verifying every command's Ed25519 signature, executing it
on its CAN bus and reading it back (the body ECU answers without actuator delay). The operator
(bench._operator) posts commands and follows them on the live event stream. In order:

1. idle: one car, nothing else; one command at a time          -> p50_ms, p99_ms
2. loaded: 1,000 more cars stream telemetry at 1 Hz; one command at a time, to those cars in
   turn                                                          -> p50_ms_loaded, p99_ms_loaded
3. throughput: the same fleet streaming; `--window` commands outstanding at once, each to a
   car with none in flight                                       -> commands_per_s

Latency is API request to the final state seen on the stream (`executed` for a lock or unlock
that worked); `verified` (telemetry confirmed it) comes later and is reported beside it. From
the database's commit timestamps each command's time is also split into its stages.
Progress goes to stdout, then a table, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench._cars import CarHost, CarHostConfig
from bench._gateway import GatewayProcess
from bench._operator import CommandSample, Operator
from bench._pgwaits import SessionSampler
from bench._phases import Meters, postgres_pids, say, tree
from bench._stack import BenchStack
from gateway.auth import Role, TokenStore
from gateway.commands import create_key_pair
from gateway.config import CommandSettings
from gateway.logconfig import configure_logging
from gateway.storage import connect

__all__ = ["main"]

PHASES = ("idle", "loaded", "throughput")
KEY_ID = "tgw-bench"
OPERATOR = "bench-operator"
_CONNECT_TIMEOUT_S = 120.0
_VERIFY_WAIT_S = 3.0


@dataclass(frozen=True)
class Options:
    seconds: float
    cars: int
    rate_hz: float
    workers: int
    car_processes: int
    window: int
    work_dir: Path | None
    keep: bool
    profile: Path | None
    durable: bool
    phases: frozenset[str]

    @property
    def latency_s(self) -> float:
        """Measured part of each latency phase."""
        return max(4.0, self.seconds / 5)

    @property
    def throughput_s(self) -> float:
        """Measured part of the throughput phase."""
        return max(5.0, self.seconds / 4)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.commands",
        description="Commands benchmark on this machine; see docs/benchmarks.md.",
        epilog="Duration: BENCH_SECONDS (default 60): a fifth measured in each latency phase, a "
        "quarter in the throughput phase; plus set-up, warm-ups and the fleet connecting.",
    )
    parser.add_argument("--cars", type=int, default=1000, help="cars streaming telemetry")
    parser.add_argument("--rate-hz", type=float, default=1.0, help="telemetry per car per second")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes (--workers)")
    parser.add_argument("--car-processes", type=int, default=1, help="processes for the cars")
    parser.add_argument(
        "--window",
        type=int,
        default=256,
        help="commands outstanding in the throughput phase (default 256: at 500/s and half a "
        "second each, a booking backend has about 250 in flight)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the gateway workers with py-spy during the throughput phase into this dir",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="which phases to run, comma-separated (default: all of idle,loaded,throughput)",
    )
    parser.add_argument(
        "--no-durable",
        action="store_true",
        help="PostgreSQL without fsync/synchronous commit (default: durable, as in production)",
    )
    args = parser.parse_args(argv)
    seconds = float(os.environ.get("BENCH_SECONDS", "60"))
    if seconds < 8:
        parser.error("BENCH_SECONDS must be at least 8")
    phases = frozenset(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or not phases <= set(PHASES):
        parser.error(f"--phases: choose from {', '.join(PHASES)}")
    if args.cars < 1 or args.rate_hz <= 0 or args.window < 1 or args.car_processes < 1:
        parser.error("--cars, --rate-hz, --window and --car-processes must be positive")
    return Options(
        seconds=seconds,
        cars=args.cars,
        rate_hz=args.rate_hz,
        workers=args.workers,
        car_processes=args.car_processes,
        window=args.window,
        work_dir=args.work_dir,
        keep=args.keep,
        profile=args.profile,
        durable=not args.no_durable,
        phases=phases,
    )


@contextmanager
def _work_dir(options: Options) -> Iterator[Path]:
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
        yield options.work_dir
        return
    path = Path(tempfile.mkdtemp(prefix="tgw-bench-commands-"))
    try:
        yield path
    finally:
        if options.keep:
            say(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between closest ranks (as PostgreSQL's percentile_cont)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _cpu_pct(before: dict[str, float], after: dict[str, float], since: float) -> dict[str, float]:
    """% of one core each part used between two meter samples; `other`: the rest of the box."""
    seconds = time.monotonic() - since
    cpu = {k: 100 * (after[k] - before.get(k, after[k])) / seconds for k in after}
    ours = sum(v for k, v in cpu.items() if k != "machine")
    cpu["other"] = max(cpu["machine"] - ours, 0.0)
    return cpu


def _batch_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean items per transaction of each command stage between two samples."""
    means = {}
    for stage, (count, items) in after.items():
        count_before, items_before = before.get(stage, (0.0, 0.0))
        if count > count_before:
            means[stage] = round((items - items_before) / (count - count_before), 1)
    return means


def _gateway_env(key_file: Path) -> dict[str, str]:
    env = {
        "TGW_COMMANDS__SIGNING_KEY_FILE": str(key_file),
        "TGW_COMMANDS__SIGNING_KEY_ID": KEY_ID,
    }
    # A booking backend sending hundreds of commands a second needs the per-operator and
    # per-car limits raised; raised rather than off, so the check's query is still paid for.
    fields = CommandSettings.model_fields
    if "rate_limit_per_operator" in fields:
        env["TGW_COMMANDS__RATE_LIMIT_PER_OPERATOR"] = str(10**9)
    if "rate_limit_per_vehicle" in fields:
        env["TGW_COMMANDS__RATE_LIMIT_PER_VEHICLE"] = str(10**9)
    return env


async def _operator_token(dsn: str) -> str:
    async with await connect(dsn) as conn:
        _, secret = await TokenStore(conn).create(OPERATOR, Role.OPERATOR, created_by="bench")
        return secret


class CommandsBenchmark:
    """One run: the phases in order, filling `results`."""

    def __init__(self, options: Options, stack: BenchStack, work: Path) -> None:
        self.options = options
        self.stack = stack
        self.work = work
        self.results: dict[str, Any] = {}
        self.meters = Meters()
        self.meters.add("broker", tree(lambda: [stack.broker.pid] if stack.broker.pid else []))
        self.meters.add("postgres", tree(lambda: postgres_pids(stack)))
        self.meters.add("operator", lambda: [psutil.Process()])
        self.hosts: list[CarHost] = []
        self.meters.add("cars", tree(lambda: [h.pid for h in self.hosts if h.pid is not None]))
        self.cpu: dict[str, dict[str, float]] = {}
        self.rates: dict[str, float] = {}
        self.gateway: GatewayProcess | None = None
        accounts = stack.car_accounts
        self.probe = accounts[0]
        self.fleet = accounts[1:]

    def run(self) -> None:
        options = self.options
        keys = create_key_pair(self.work / "keys", KEY_ID)
        self.key = keys
        gateway_accounts = self.stack.add_gateways(options.workers)
        broker = (self.stack.broker.host, self.stack.broker.port)
        gateway = GatewayProcess(
            gateway_accounts,
            broker,
            self.stack.dsn,
            self.work / "gateway.log",
            extra_env=_gateway_env(keys.private_path),
        )
        say(f"gateway: tgw gateway run --workers {options.workers} (signing key {KEY_ID}) ...")
        gateway.start()
        self.gateway = gateway
        self.meters.add("gateway", gateway.processes)
        try:
            token = asyncio.run(_operator_token(self.stack.dsn))
            asyncio.run(self._phases(gateway, token))
        finally:
            for host in self.hosts:
                host.stop()
            code = gateway.stop()
            say(f"gateway stopped (exit {code})")
        self._stages()

    def _host(self, name: str, accounts: Sequence[Any]) -> CarHost:
        config = CarHostConfig(
            cars=tuple((a.username, a.password) for a in accounts),
            broker_host=self.stack.broker.host,
            broker_port=self.stack.broker.port,
            key_id=KEY_ID,
            public_key_hex=self.key.public_hex,
            interval_s=1.0 / self.options.rate_hz,
            queue_dir=self.work / "cars",
        )
        host = CarHost(config, self.work / f"{name}.log")
        host.start()
        self.hosts.append(host)
        return host

    async def _wait_cars(self, hosts: Sequence[CarHost], vins: Sequence[str]) -> float:
        """Until every car is connected and the gateway knows what it can do."""
        started = time.monotonic()
        wanted = sum(host.cars for host in hosts)
        async with await psycopg.AsyncConnection.connect(self.stack.dsn, autocommit=True) as db:
            while True:
                if not all(host.alive for host in hosts):
                    raise RuntimeError(f"a car process died; see {self.work}/*.log")
                connected = sum(host.control.connected.value for host in hosts)
                cur = await db.execute(
                    "SELECT count(*) FROM vehicles WHERE vin = ANY(%s) "
                    "AND cardinality(capabilities) > 0",
                    (list(vins),),
                )
                row = await cur.fetchone()
                registered = int(row[0]) if row else 0
                if connected >= wanted and registered >= len(vins):
                    return time.monotonic() - started
                if time.monotonic() - started > _CONNECT_TIMEOUT_S:
                    raise RuntimeError(
                        f"after {_CONNECT_TIMEOUT_S:.0f} s: {connected}/{wanted} cars connected, "
                        f"{registered}/{len(vins)} registered with capabilities"
                    )
                await asyncio.sleep(0.25)

    async def _phases(self, gateway: GatewayProcess, token: str) -> None:
        options, phases = self.options, self.options.phases
        probe = self._host("car-probe", [self.probe])
        await self._wait_cars([probe], [self.probe.username])
        connections = max(4, options.window + 4)
        async with Operator("127.0.0.1", gateway.ports, token, connections) as operator:
            self.operator = operator
            if "idle" in phases:  # 1: one car, nothing else running
                say("quiet: 1 car, no commands, 2 s (the CPU baseline of the idle phase) ...")
                before, started = self.meters.sample(), time.monotonic()
                await asyncio.sleep(2.0)
                self.cpu["quiet"] = _cpu_pct(before, self.meters.sample(), started)
                say(f"idle: 1 car, one command at a time, 1 s warm-up, {options.latency_s:.0f} s")
                await self._phase(
                    "idle",
                    1.0,
                    operator.sequential(
                        "idle",
                        [self.probe.username],
                        warmup_s=1.0,
                        measure_s=options.latency_s,
                        progress=say,
                    ),
                )
            if phases & {"loaded", "throughput"}:
                await self._fleet(operator, gateway)
            await self._await_verified(operator.samples)
            self.results["stream_events"] = operator.events
            self._car_counters()

    async def _fleet(self, operator: Operator, gateway: GatewayProcess) -> None:
        """Phases 2 and 3: the fleet streams telemetry meanwhile."""
        options, phases = self.options, self.options.phases
        say(f"fleet: {len(self.fleet)} cars at {options.rate_hz:g} Hz ...")
        vins = [a.username for a in self.fleet]
        shares = [self.fleet[i :: options.car_processes] for i in range(options.car_processes)]
        hosts = [self._host(f"cars-{i + 1}", share) for i, share in enumerate(shares)]
        took = await self._wait_cars(hosts, vins)
        say(f"  connected and registered in {took:.1f} s")
        self.results["fleet_connect_s"] = round(took, 1)
        if "loaded" in phases:  # 2: one command at a time, to the fleet's cars in turn
            say(f"loaded: one command at a time, 2 s warm-up, {options.latency_s:.0f} s ...")
            published, started = sum(h.control.published.value for h in hosts), time.monotonic()
            await self._phase(
                "loaded",
                2.0,
                operator.sequential(
                    "loaded", vins, warmup_s=2.0, measure_s=options.latency_s, progress=say
                ),
            )
            telemetry = sum(h.control.published.value for h in hosts) - published
            self.results["telemetry_msgs_per_s_loaded"] = round(
                telemetry / (time.monotonic() - started)
            )
        if "throughput" in phases:  # 3: as many as it sustains, to cars with none in flight
            say(
                f"throughput: {options.window} commands outstanding over "
                f"{len(vins) + 1} cars, 2 s warm-up, {options.throughput_s:.0f} s ..."
            )
            profiler = self._start_profiler(gateway)
            await self._phase(
                "throughput",
                2.0,
                operator.closed_loop(
                    "throughput",
                    [self.probe.username, *vins],
                    window=options.window,
                    warmup_s=2.0,
                    measure_s=options.throughput_s,
                    progress=say,
                ),
            )
            if profiler is not None:
                self.results["profile"] = profiler.finish()

    async def _phase(
        self, name: str, warmup_s: float, run: Coroutine[Any, Any, tuple[float, float]]
    ) -> None:
        """Run a phase; CPU of every part is taken over its measured part only."""
        task = asyncio.create_task(run)
        await asyncio.wait({task}, timeout=warmup_s)
        before, started = self.meters.sample(), time.monotonic()
        assert self.gateway is not None
        batches = self.gateway.command_batches()
        # What the database sessions wait for (row locks, WAL flushes, the NOTIFY queue's lock).
        sessions = SessionSampler(self.stack.dsn)
        sessions.start()
        try:
            measure_from, end = await task
        finally:
            waits = sessions.stop()
        self.cpu[name] = _cpu_pct(before, self.meters.sample(), started)
        suffix = {"idle": "", "loaded": "_loaded", "throughput": "_throughput"}[name]
        self.results[f"batch_mean{suffix}"] = _batch_means(batches, self.gateway.command_batches())
        self.results[f"pg_sessions_pct{suffix}"] = waits
        self._summarise(name, end - measure_from)

    def _start_profiler(self, gateway: GatewayProcess) -> Any:
        if self.options.profile is None:
            return None
        from bench._profile import PySpy  # noqa: PLC0415  # only with --profile

        profiler = PySpy(
            self.options.profile, gateway.worker_pids(), self.options.throughput_s + 10
        )
        profiler.start()
        return profiler

    async def _await_verified(self, samples: list[CommandSample]) -> None:
        """Give `verified` (sweeper + telemetry) a moment to arrive for the last commands."""
        deadline = time.monotonic() + _VERIFY_WAIT_S
        while time.monotonic() < deadline:
            if all(s.verified for s in samples if s.status == "executed"):
                return
            await asyncio.sleep(0.1)

    def _summarise(self, phase: str, seconds: float) -> None:
        samples = [s for s in self.operator.samples if s.phase == phase and s.measured]
        latencies = [s.latency_ms for s in samples if s.status == "executed" and s.latency_ms]
        outcomes: dict[str, int] = {}
        for sample in samples:
            key = sample.status or "unknown"
            outcomes[key] = outcomes.get(key, 0) + 1
        suffix = {"idle": "", "loaded": "_loaded", "throughput": "_throughput"}[phase]
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        say(
            f"  {phase}: {len(latencies)} executed of {len(samples)}, p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, max {max(latencies, default=float('nan')):.1f} ms"
        )
        failures = {s.status: s.reason for s in samples if s.status != "executed"}
        for status, reason in failures.items():
            say(f"  not executed: {outcomes[status or 'unknown']} x {status}, e.g. {reason}")
        self.rates[phase] = len(latencies) / seconds
        self.results |= {
            f"p50_ms{suffix}": round(p50, 1),
            f"p99_ms{suffix}": round(p99, 1),
            f"max_ms{suffix}": round(max(latencies, default=float("nan")), 1),
            f"commands{suffix}": len(samples),
            f"outcomes{suffix}": outcomes,
            f"api_p50_ms{suffix}": round(
                _percentile([s.api_ms for s in samples if s.api_ms], 0.5), 1
            ),
        }
        if phase == "throughput":
            self.results["commands_per_s"] = round(len(latencies) / seconds, 1)

    def _cpu_per_command(self, busy: str, calm: str) -> dict[str, float]:
        """CPU milliseconds each part spends per command: phase `busy`'s CPU over phase
        `calm`'s (the same cars, fewer commands), divided by the extra commands per second.
        Other load on the machine changes it less than the rates (it inflates it somewhat:
        on a shared VM, waiting for a core can count as CPU time). Empty when the difference
        is too small to tell, or a part starved by other load did less in the busier phase."""
        high, low = self.cpu.get(busy), self.cpu.get(calm)
        extra = self.rates.get(busy, 0.0) - self.rates.get(calm, 0.0)
        if high is None or low is None or extra < 2.0:
            return {}
        parts = [k for k in high if k not in ("machine", "other")]
        # % of one core is 10 ms of CPU per second.
        per = {k: round(10 * (high[k] - low.get(k, 0.0)) / extra, 2) for k in parts}
        if min(per.values()) < 0:
            return {}
        per["total"] = round(sum(per.values()), 2)
        return per

    def _capacity(self, per: dict[str, float]) -> None:
        """What the cores would sustain with nothing else on them: what the fleet's telemetry
        leaves of them (loaded phase), divided by the CPU a command costs (an estimate)."""
        loaded = self.cpu.get("loaded")
        if loaded is None or not per.get("total"):
            return
        busy = sum(v for k, v in loaded.items() if k not in ("machine", "other"))
        cores = psutil.cpu_count() or 1
        self.results["commands_per_s_cpu_bound"] = round(
            max(0.0, 100 * cores - busy) * 10 / per["total"], 1
        )

    def _ceilings(self) -> None:
        """What the benchmark itself could drive, so that a rate is never its own limit: the
        operator process at a whole core (its CPU per command in the throughput phase), and
        the closed loop's window at the idle phase's median latency (Little's law)."""
        rate = self.results.get("commands_per_s")
        operator = self.cpu.get("throughput", {}).get("operator")
        if rate and operator:
            self.results["operator_ceiling_commands_per_s"] = round(100 * rate / operator)
        idle_p50 = self.results.get("p50_ms")
        if idle_p50 and not math.isnan(idle_p50):
            self.results["window_ceiling_commands_per_s"] = round(
                1000 * self.options.window / idle_p50
            )

    def _car_counters(self) -> None:
        controls = [host.control for host in self.hosts]
        self.results["cars_said"] = {
            "received": sum(c.received.value for c in controls),
            "executed": sum(c.executed.value for c in controls),
            "rejected": sum(c.rejected.value for c in controls),
            "failed": sum(c.failed.value for c in controls),
        }

    def _stages(self) -> None:
        """Verified latencies, and where each command's time went (database commit times)."""
        samples = [s for s in self.operator.samples if s.measured and s.command_id]
        for phase, suffix in (("idle", ""), ("loaded", "_loaded"), ("throughput", "_throughput")):
            verified = [s.verified_ms for s in samples if s.phase == phase and s.verified_ms]
            if verified:
                self.results[f"verified_p50_ms{suffix}"] = round(_percentile(verified, 0.5), 1)
                self.results[f"verified_p99_ms{suffix}"] = round(_percentile(verified, 0.99), 1)
        self.results["stages_p50_ms"] = stage_breakdown(self.stack.dsn, samples)
        self.rates["quiet"] = 0.0
        idle = self._cpu_per_command("idle", "quiet")
        throughput = self._cpu_per_command("throughput", "loaded")
        self.results["cpu_ms_per_command"] = idle
        self.results["cpu_ms_per_command_throughput"] = throughput
        self._capacity(throughput or idle)
        self._ceilings()
        self.results["cpu_pct"] = {
            phase: {k: round(v) for k, v in cpu.items()} for phase, cpu in self.cpu.items()
        }


_STAGES = (
    ("api", "request written -> queued committed (auth, rate limit, insert)"),
    ("to_car", "queued committed -> the car accepted it (dispatch, sign, broker, car's checks)"),
    ("car", "the car accepted -> it executed (CAN out, body ECU, read back)"),
    ("result", "the car executed -> executed committed (broker, gateway, database)"),
    ("stream", "executed committed -> seen on the operator's event stream"),
)


def stage_breakdown(dsn: str, samples: Sequence[CommandSample]) -> dict[str, dict[str, float]]:
    """Median time of each stage per phase, from commit timestamps and the car's own clock
    (this machine's), so the stages add up to the whole latency. `sent` is informational:
    queued committed -> sent committed (the dispatch transaction ends after the PUBACK, by
    which time the car may already have the command)."""
    query = """
        SELECT c.id::text,
               extract(epoch FROM max(pg_xact_commit_timestamp(t.xmin))
                   FILTER (WHERE t.status = 'queued')),
               max((t.detail ->> 'car_ts')::bigint) FILTER (WHERE t.status = 'accepted') / 1e3,
               max((t.detail ->> 'car_ts')::bigint) FILTER (WHERE t.status = 'executed') / 1e3,
               extract(epoch FROM max(pg_xact_commit_timestamp(t.xmin))
                   FILTER (WHERE t.status = 'executed')),
               extract(epoch FROM max(pg_xact_commit_timestamp(t.xmin))
                   FILTER (WHERE t.status = 'sent'))
        FROM commands c JOIN command_transitions t ON t.command_id = c.id
        WHERE c.id = ANY(%s::uuid[]) GROUP BY c.id
    """
    wanted = {s.command_id: s for s in samples if s.status == "executed"}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query, (list(wanted),)).fetchall()
    by_phase: dict[str, dict[str, list[float]]] = {}
    for command_id, queued, accepted, executed, done, sent in rows:
        sample = wanted[command_id]
        if None in (queued, accepted, executed, done, sent) or sample.final is None:
            continue
        seen_wall = sample.posted_wall + (sample.final - sample.posted)
        points = [sample.posted_wall, queued, accepted, executed, done, seen_wall]
        empty: dict[str, list[float]] = {name: [] for name, _ in (*_STAGES, ("sent", ""))}
        stages = by_phase.setdefault(sample.phase, empty)
        for (name, _), start, end in zip(_STAGES, points, points[1:], strict=False):
            stages[name].append(1000 * (float(end) - float(start)))
        stages["sent"].append(1000 * (float(sent) - float(queued)))
    return {
        phase: {name: round(statistics.median(v), 1) for name, v in stages.items() if v}
        for phase, stages in by_phase.items()
    }


_TABLE = (
    ("p50_ms", "1 car, system idle: request -> executed seen on the event stream"),
    ("p99_ms", "1 car, system idle (target <= 50)"),
    ("p50_ms_loaded", "1,000 cars streaming at 1 Hz, one command at a time"),
    ("p99_ms_loaded", "1,000 cars streaming at 1 Hz (target <= 150)"),
    ("commands_per_s", "executed per second, window outstanding, fleet streaming (>= 500)"),
    ("commands_per_s_cpu_bound", "estimate: the cores the telemetry leaves / CPU per command"),
    ("operator_ceiling_commands_per_s", "the bench's operator at a whole core (its own limit)"),
    ("window_ceiling_commands_per_s", "window / idle p50 latency (the closed loop's limit)"),
    ("p50_ms_throughput", "latency at that rate"),
    ("p99_ms_throughput", "latency at that rate"),
    ("verified_p50_ms", "request -> verified (telemetry confirmed), idle"),
    ("verified_p50_ms_loaded", "request -> verified, loaded"),
    ("api_p50_ms", "request -> 202 answer, idle"),
    ("telemetry_msgs_per_s_loaded", "telemetry the fleet published during the loaded phase"),
)


def table(results: dict[str, Any]) -> str:
    """The main figures for people; the JSON line has them all."""
    width = max(len(name) for name, _ in _TABLE)
    lines = [f"{'figure':<{width}}  {'value':>10}  meaning", "-" * (width + 80)]
    for name, meaning in _TABLE:
        if name in results:
            value = results[name]
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            lines.append(f"{name:<{width}}  {shown:>10}  {meaning}")
    stages = results.get("stages_p50_ms", {})
    if stages:
        lines += [
            "",
            "median stage times (ms):",
            f"{'stage':<12}" + "".join(f"{phase:>12}" for phase in stages),
        ]
        for name, meaning in (*_STAGES, ("sent", "(queued committed -> sent committed)")):
            cells = "".join(f"{stages[p].get(name, float('nan')):>12.1f}" for p in stages)
            lines.append(f"{name:<12}{cells}   {meaning}")
    lines.append("")
    for key, how in (
        ("cpu_ms_per_command", "idle phase over quiet"),
        ("cpu_ms_per_command_throughput", "throughput phase over loaded"),
    ):
        if results.get(key):
            shares = ", ".join(f"{name} {value}" for name, value in results[key].items())
            lines.append(f"CPU per command (ms, {how}): {shares}")
    cpu = results.get("cpu_pct", {})
    if cpu:
        names = [n for n in next(iter(cpu.values())) if n != "machine"] + ["machine"]
        lines += ["CPU, % of one core:", f"{'phase':<12}" + "".join(f"{n:>10}" for n in names)]
        for phase, shares in cpu.items():
            lines.append(f"{phase:<12}" + "".join(f"{shares.get(n, 0):>10}" for n in names))
    return "\n".join(lines)


def run(options: Options) -> dict[str, Any]:
    """Set up, run every phase, tear down; return the figures."""
    with _work_dir(options) as work:
        say(f"work dir {work}; starting broker and database ({options.cars + 1} car accounts) ...")
        with BenchStack(work, cars=options.cars + 1, durable=options.durable) as stack:
            benchmark = CommandsBenchmark(options, stack, work)
            benchmark.run()
            results = benchmark.results
            results["timescaledb"] = stack.timescaledb
    return results | {
        "cars": options.cars,
        "rate_hz": options.rate_hz,
        "workers": options.workers,
        "car_processes": options.car_processes,
        "window": options.window,
        "bench_seconds": options.seconds,
        "durable": options.durable,
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
