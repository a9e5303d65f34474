"""Fault suite: faults under a steady simulated fleet; nothing lost, nothing stored twice, every
command resolved.

    python -m bench.chaos [options]           (or: make chaos BENCH_ARGS="...")
    BENCH_SECONDS=15 python -m bench.chaos    (the short suite; CI runs it in tests/e2e)

Each phase starts `tgw sim fleet` afresh (same cars, same on-disk queues, a ledger of its own),
waits until every car is connected, runs for BENCH_SECONDS with one fault injected at 20 % of
it, stops the fleet once the cars' queues are empty, then counts the phase's ledger against
the database and follows its commands to their final state:

1. kill       the gateway (instance 1 with --instances N) gets SIGKILL and is started again
2. broker     Mosquitto is stopped cleanly and started again (cars and gateway reconnect)
3. database   PostgreSQL is stopped for 30 s, then started (the gateway stops acknowledging)
4. offline    a fifth of the cars lose coverage for 5 minutes (the simulator's dead zone: their
              connection drops and they queue), then come back and flush their backlog
5. duplicates the cars send some messages twice (the simulator's fault), and a second small
              fleet is stopped and its cars re-publish half of what they sent, shuffled
              (captured from the broker), some of it twice

During each phase lock and unlock commands go through the HTTP API: before the fault, during
it and after it. A request no gateway could take (it is down, or the database is) is counted
as refused; every command the API accepted must reach a final state.

Durations: BENCH_SECONDS (default 400) is each phase's length. The outages scale with it: at
400 s and more they are the nominal ones (database down 30 s, cars offline 300 s; the offline
phase is lengthened so the cars have time to come back); a shorter run scales both by
BENCH_SECONDS / 400, with floors of 3 s and 5 s. BENCH_SECONDS=15 gives a suite of about three
minutes.

Output: progress, then a table (fault, published, stored, lost, duplicated, commands resolved),
then ONE JSON object as the last line: `published`, `stored`, `lost`, `duplicated`,
`commands_unresolved` over all phases, and the details.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench._commands import CommandProbe, CommandTally, unresolved_in_database
from bench._fleet import FleetOptions, FleetProcess
from bench._harness import bench_seconds, finish, stop_on_sigterm, storage_flag, table, work_dir
from bench._instances import GatewayInstance, InstanceCounters
from bench._ledger import LedgerCheck, duplicates_anywhere
from bench._phases import say
from bench._replay import Capture, replay
from bench._services import FleetAccounts, FleetServices
from gateway.logconfig import configure_logging

__all__ = ["main"]

PHASES = ("kill", "broker", "database", "offline", "duplicates")
NOMINAL_PHASE_S = 400.0  # at this length and above, the outages are the nominal ones
DATABASE_OUTAGE_S = 30.0
OFFLINE_S = 300.0
_TICK_S = 0.5
_PROGRESS_EVERY_S = 10.0
# After the car accepted: the gateway's answer_timeout_s (15) + expiry grace (5) + margin.
_COMMAND_SETTLE_S = 40.0


@dataclass(frozen=True)
class Options:
    seconds: float
    cars: int
    processes: int
    instances: int
    seed: int
    commands: int
    replay_cars: int
    offline_share: float
    driving_interval_s: float
    phases: tuple[str, ...]
    storage: str
    durable: bool
    work_dir: Path | None
    keep: bool

    @property
    def scale(self) -> float:
        return min(1.0, self.seconds / NOMINAL_PHASE_S)

    @property
    def lead_s(self) -> float:
        return max(3.0, 0.2 * self.seconds)

    @property
    def database_outage_s(self) -> float:
        return max(3.0, DATABASE_OUTAGE_S * self.scale)

    @property
    def offline_s(self) -> float:
        return max(5.0, OFFLINE_S * self.scale)

    @property
    def command_ttl_s(self) -> int:
        return 15


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Fault suite under a simulated fleet; see docs/operations.md.",
        epilog="BENCH_SECONDS (default 400) is each phase's length; shorter runs scale the "
        "outages (database 30 s, cars offline 300 s) by BENCH_SECONDS/400.",
    )
    parser.add_argument("--cars", type=int, default=1000, help="simulated cars [1000]")
    parser.add_argument("--processes", type=int, default=1, help="fleet processes [1]")
    parser.add_argument(
        "--instances", type=int, default=1, help="gateway instances on the shared subscription"
    )
    parser.add_argument("--seed", type=int, default=7, help="the fleet's seed")
    parser.add_argument("--commands", type=int, default=6, help="commands per phase [6]")
    parser.add_argument("--replay-cars", type=int, default=20, help="cars that replay [20]")
    parser.add_argument(
        "--offline-share", type=float, default=0.2, help="share of cars going offline [0.2]"
    )
    parser.add_argument(
        "--driving-interval", type=float, default=1.0, help="seconds between samples, driving"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}"
    )
    parser.add_argument("--storage", choices=("auto", "timescaledb", "postgres"), default="auto")
    parser.add_argument("--no-durable", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, ledgers)")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        parser.error(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")
    if args.cars < 10 or args.instances < 1 or args.processes < 1:
        parser.error("--cars at least 10, --instances and --processes at least 1")
    return Options(
        seconds=bench_seconds(400.0, minimum=10.0),
        cars=args.cars,
        processes=args.processes,
        instances=args.instances,
        seed=args.seed,
        commands=args.commands,
        replay_cars=args.replay_cars,
        offline_share=args.offline_share,
        driving_interval_s=args.driving_interval,
        phases=phases,
        storage=args.storage,
        durable=not args.no_durable,
        work_dir=args.work_dir,
        keep=args.keep,
    )


@dataclass(order=True)
class Step:
    """Something that happens `at_s` seconds into a phase."""

    at_s: float
    label: str = field(compare=False)
    run: Callable[[], None] = field(compare=False)


@dataclass
class PhaseResult:
    fault: str
    detail: str
    published: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    catch_up_s: float = 0.0
    carried_rows: int = 0  # left in the cars' queues at the end: published in the next phase
    commands: CommandTally = field(default_factory=CommandTally)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "detail": self.detail,
            "published": self.published,
            "stored": self.stored,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "catch_up_s": round(self.catch_up_s, 1),
            "carried_rows": self.carried_rows,
            "commands": self.commands.as_dict(),
            **self.extra,
        }


class ChaosSuite:
    """The phases in order, against one set of services and gateway instances."""

    def __init__(self, options: Options, services: FleetServices, work: Path) -> None:
        self.options = options
        self.services = services
        self.work = work
        self.rng = random.Random(options.seed)  # fault choices, not security
        self.fleet_accounts = services.add_fleet(options.cars, options.seed)
        self.replay_accounts = services.add_fleet(
            options.replay_cars, options.seed + 1, name="replay-fleet"
        )
        broker = (services.broker.host, services.broker.port)
        env = {
            "TGW_COMMANDS__SIGNING_KEY_FILE": str(services.signing_key()),
            # Bench traffic: more commands per car and operator than a person would send.
            "TGW_COMMANDS__RATE_LIMIT_PER_VEHICLE": "0",
            "TGW_COMMANDS__RATE_LIMIT_PER_OPERATOR": "0",
        }
        self.instances = [
            GatewayInstance(
                i,
                services.add_gateway(f"tgw-chaos-{i}"),
                broker=broker,
                dsn=services.dsn,
                log_file=work / f"gateway-{i}.log",
                extra_env=env,
            )
            for i in range(1, options.instances + 1)
        ]
        self.counters = InstanceCounters(self.instances)
        self.probe: CommandProbe | None = None
        self.results: list[PhaseResult] = []
        self.carried = 0

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        say(f"starting {len(self.instances)} gateway instance(s) ...")
        for instance in self.instances:
            instance.start()
        token = self.services.operator_token()
        self.probe = CommandProbe(token, self._api_urls, self.options.command_ttl_s)
        try:
            for number, name in enumerate(self.options.phases, start=1):
                phase = getattr(self, f"phase_{name}")
                self.results.append(phase(number))
        finally:
            self.probe.close()
            for instance in self.instances:
                instance.close()

    def _api_urls(self) -> list[str]:
        return [instance.base_url for instance in self.instances if instance.running]

    def _fleet(self, number: int, name: str, **faults: float) -> FleetProcess:
        options = self.options
        fleet = self.fleet_accounts
        fleet_options = FleetOptions(
            cars=fleet.cars,
            seed=fleet.seed,
            credentials=fleet.credentials,
            queue_dir=self.work / "queues",
            ledger=self.work / "ledgers" / f"{number}-{name}.csv",
            processes=options.processes,
            driving_interval_s=options.driving_interval_s,
            **faults,
        )
        broker = (self.services.broker.host, self.services.broker.port)
        return FleetProcess(fleet_options, broker, self.work / f"fleet-{number}-{name}.log")

    def _commands_at(self, at_s: float, label: str) -> Step:
        def send() -> None:
            assert self.probe is not None
            count = max(1, self.options.commands // 3)
            vins = self.rng.sample(self.fleet_accounts.vins, count)
            for vin in vins:
                self.probe.send(vin, self.rng.choice(("lock", "unlock")))

        return Step(at_s, f"commands ({label})", send)

    def _run_phase(
        self,
        number: int,
        fault: str,
        detail: str,
        *,
        fleet: FleetProcess,
        steps: list[Step],
        length_s: float,
        extra_ledgers: tuple[Path, ...] = (),
        outage_s: float = 0.0,
    ) -> PhaseResult:
        assert self.probe is not None
        say(f"\n[{number}] {fault}: {detail}")
        self.probe.start_phase()
        result = PhaseResult(fault, detail)
        began = time.monotonic()
        fleet.start()
        try:
            connect_s = fleet.wait_connected()
            say(f"  {fleet.options.cars} cars connected in {connect_s:.1f} s; {length_s:.0f} s ...")
            self._run_steps(fleet, sorted(steps), length_s)
            slack = max(5, fleet.options.cars // 100)
            if not fleet.wait_queues_empty(timeout_s=60.0 + outage_s, slack=slack):
                say("  the cars' queues did not empty in time; what is left carries over")
        finally:
            stopping = time.monotonic()
            summary = fleet.stop()
        stopped = time.monotonic()
        result.carried_rows = int(summary.get("queued", 0))
        result.extra["sim_duplicates_sent"] = int(summary.get("duplicates_sent", 0))
        result.extra["sim_msgs_per_s"] = summary.get("msgs_per_s")
        assert fleet.options.ledger is not None
        with LedgerCheck(self.services.dsn) as ledger:
            ledger.load([fleet.options.ledger, *extra_ledgers])
            counted, waited = ledger.wait_stored(timeout_s=120.0 + outage_s)
        result.published, result.stored = counted.published, counted.stored
        result.lost, result.duplicated = counted.lost, counted.duplicated
        result.catch_up_s = waited
        counted_at = time.monotonic()
        result.commands = self.probe.resolve(self.options.command_ttl_s + _COMMAND_SETTLE_S)
        self.counters.poll()
        result.extra["timing_s"] = {
            "fleet_run": round(stopping - began, 1),
            "fleet_stop": round(stopped - stopping, 1),
            "count": round(counted_at - stopped, 1),
            "commands": round(time.monotonic() - counted_at, 1),
        }
        say(
            f"  published {result.published:,}, stored {result.stored:,}, lost {result.lost}, "
            f"duplicated {result.duplicated}; commands {result.commands.resolved}/"
            f"{result.commands.accepted} resolved ({dict(result.commands.final)}), "
            f"refused {dict(result.commands.refused)}; left queued {result.carried_rows}; "
            f"timing {result.extra['timing_s']}"
        )
        return result

    def _run_steps(self, fleet: FleetProcess, steps: list[Step], length_s: float) -> None:
        started = time.monotonic()
        next_progress = started + _PROGRESS_EVERY_S
        while True:
            now = time.monotonic()
            elapsed = now - started
            while steps and steps[0].at_s <= elapsed:
                step = steps.pop(0)
                say(f"  {elapsed:6.1f} s  {step.label}")
                step.run()
            if elapsed >= length_s and not steps:
                return
            fleet.check()
            self.counters.poll()
            if now >= next_progress:
                progress = fleet.progress
                if progress is not None:
                    say(
                        f"  {elapsed:6.1f} s  cars connected {progress.connected:,}/"
                        f"{progress.cars:,}  {progress.msgs_per_s:,.0f} msgs/s  "
                        f"queued {progress.queued:,}"
                    )
                next_progress = now + _PROGRESS_EVERY_S
            time.sleep(_TICK_S)

    # -- the phases ---------------------------------------------------------------------------

    def phase_kill(self, number: int) -> PhaseResult:
        options = self.options
        victim = self.instances[0]
        down_s = max(1.0, 0.02 * options.seconds)
        lead = options.lead_s

        def kill() -> None:
            victim.kill()

        def restart() -> None:
            victim.start()

        steps = [
            self._commands_at(lead - 1.0, "before"),
            Step(lead, f"SIGKILL {victim.name} (pid {victim.pid})", kill),
            self._commands_at(lead + down_s / 2, "while it is down"),
            Step(lead + down_s, f"start {victim.name} again", restart),
            self._commands_at(lead + down_s + 2.0, "after"),
        ]
        detail = f"SIGKILL {victim.name} at {lead:.0f} s, started again {down_s:.0f} s later"
        return self._run_phase(
            number, "gateway SIGKILL", detail,
            fleet=self._fleet(number, "kill"), steps=steps, length_s=options.seconds,
        )  # fmt: skip

    def phase_broker(self, number: int) -> PhaseResult:
        options = self.options
        broker = self.services.broker
        down_s = max(2.0, 0.025 * options.seconds)
        lead = options.lead_s
        steps = [
            self._commands_at(lead - 1.0, "before"),
            Step(lead, "stop Mosquitto", broker.stop),
            self._commands_at(lead + down_s / 2, "while it is down"),
            Step(lead + down_s, "start Mosquitto", broker.start),
            self._commands_at(lead + down_s + 3.0, "after"),
        ]
        detail = f"Mosquitto stopped at {lead:.0f} s for {down_s:.0f} s (persistence kept)"
        return self._run_phase(
            number, "broker restart", detail,
            fleet=self._fleet(number, "broker"), steps=steps, length_s=options.seconds,
            outage_s=down_s,
        )  # fmt: skip

    def phase_database(self, number: int) -> PhaseResult:
        options = self.options
        postgres = self.services.postgres
        down_s = options.database_outage_s
        lead = options.lead_s
        steps = [
            self._commands_at(lead - 1.0, "before"),
            Step(lead, "stop PostgreSQL", postgres.stop),
            self._commands_at(lead + down_s / 2, "while it is down"),
            Step(lead + down_s, "start PostgreSQL", postgres.start),
            self._commands_at(lead + down_s + 3.0, "after"),
        ]
        length = max(options.seconds, lead + down_s + 10.0)
        detail = f"PostgreSQL stopped at {lead:.0f} s for {down_s:.0f} s"
        return self._run_phase(
            number, "database outage", detail,
            fleet=self._fleet(number, "database"), steps=steps, length_s=length,
            outage_s=down_s,
        )  # fmt: skip

    def phase_offline(self, number: int) -> PhaseResult:
        options = self.options
        offline_s = options.offline_s
        lead = options.lead_s
        # The fleet's clock starts before its cars connect (at --connect-rate, 500/s).
        connect_s = options.cars / 500 / options.processes + 1.0
        fleet = self._fleet(
            number,
            "offline",
            dead_zone_share=options.offline_share,
            dead_zone_after_s=round(connect_s + lead, 1),
            dead_zone_s=offline_s,
        )
        steps = [
            self._commands_at(lead - 1.0, "before"),
            self._commands_at(lead + offline_s / 2, "while cars are offline"),
            self._commands_at(lead + offline_s + 3.0, "after they are back"),
        ]
        length = max(options.seconds, lead + offline_s + max(10.0, 0.2 * options.seconds))
        share = round(100 * options.offline_share)
        detail = f"{share} % of the cars offline at ~{lead:.0f} s for {offline_s:.0f} s"
        return self._run_phase(
            number, "cars offline", detail,
            fleet=fleet, steps=steps, length_s=length, outage_s=offline_s,
        )  # fmt: skip

    def phase_duplicates(self, number: int) -> PhaseResult:
        options = self.options
        lead = options.lead_s
        accounts = self.replay_accounts
        replay_ledger = self.work / "ledgers" / f"{number}-replay.csv"
        replay_fleet = FleetProcess(
            FleetOptions(
                cars=accounts.cars,
                seed=accounts.seed,
                credentials=accounts.credentials,
                queue_dir=self.work / "replay-queues",
                ledger=replay_ledger,
                driving_interval_s=1.0,
                driving_share=1.0,  # they all drive: something to replay
            ),
            (self.services.broker.host, self.services.broker.port),
            self.work / f"fleet-{number}-replay.log",
        )
        capture = Capture(self.services.add_gateway("tgw-chaos-capture"), list(accounts.vins))
        report: dict[str, int] = {}

        def stop_and_replay() -> None:
            replay_fleet.stop()
            time.sleep(0.5)  # the last PUBACKs' messages on their way to the capture
            captured = capture.take()
            done = replay(
                _car_accounts(self.services, accounts),
                captured,
                share=0.5,
                twice_share=0.2,
                rng=self.rng,
            )
            report.update(
                replay_cars=done.cars, captured=done.captured, republished=done.republished
            )
            say(f"           {done.republished} messages of {done.cars} cars published again")

        steps = [
            self._commands_at(lead - 1.0, "before"),
            Step(lead, "replay cars stop, then re-publish half, shuffled", stop_and_replay),
            self._commands_at(lead + 3.0, "after"),
        ]
        detail = (
            "5 % of messages sent twice by the cars; "
            f"{accounts.cars} more cars re-publish half their messages, shuffled"
        )
        fleet = self._fleet(number, "duplicates", duplicate_share=0.05)
        with capture:
            replay_fleet.start()
            try:
                replay_fleet.wait_connected()
                result = self._run_phase(
                    number, "duplicates + reorder", detail,
                    fleet=fleet, steps=steps, length_s=options.seconds,
                    extra_ledgers=(replay_ledger,),
                )  # fmt: skip
            finally:
                replay_fleet.stop()
        result.extra |= report
        return result

    # -- the figures --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        results = self.results
        accepted = sum(r.commands.accepted for r in results)
        unresolved_phases = sum(r.commands.unresolved for r in results)
        in_database = unresolved_in_database(self.services.dsn)
        final: dict[str, int] = {}
        for r in results:
            for status, count in r.commands.final.items():
                final[status] = final.get(status, 0) + count
        return {
            "published": sum(r.published for r in results),
            "stored": sum(r.stored for r in results),
            "lost": sum(r.lost for r in results),
            "duplicated": sum(r.duplicated for r in results),
            "duplicates_in_tables": duplicates_anywhere(self.services.dsn),
            "commands_requested": sum(r.commands.requested for r in results),
            "commands_accepted": accepted,
            "commands_resolved": sum(r.commands.resolved for r in results),
            "commands_unresolved": max(unresolved_phases, sum(in_database.values())),
            "commands_unresolved_in_database": in_database,
            "commands_final": final,
            "commands_refused": sum(sum(r.commands.refused.values()) for r in results),
            "left_in_car_queues": results[-1].carried_rows if results else 0,
            "phases": [r.as_dict() for r in results],
            "per_instance": self.counters.snapshot(),
        }


def _car_accounts(services: FleetServices, fleet: FleetAccounts) -> dict[str, Any]:
    return {vin: services.car_account(fleet, vin) for vin in fleet.vins}


def print_table(results: list[PhaseResult]) -> None:
    rows: list[list[object]] = [
        [
            r.fault,
            r.published,
            r.stored,
            r.lost,
            r.duplicated,
            f"{r.commands.resolved}/{r.commands.accepted}",
            sum(r.commands.refused.values()),
            f"{r.catch_up_s:.1f}",
        ]
        for r in results
    ]
    rows.append(
        [
            "all",
            sum(r.published for r in results),
            sum(r.stored for r in results),
            sum(r.lost for r in results),
            sum(r.duplicated for r in results),
            f"{sum(r.commands.resolved for r in results)}/"
            f"{sum(r.commands.accepted for r in results)}",
            sum(sum(r.commands.refused.values()) for r in results),
            "",
        ]
    )
    headers = [
        "fault", "published", "stored", "lost", "duplicated", "commands resolved",
        "refused", "catch-up s",
    ]  # fmt: skip
    say(table(headers, rows))


def run(options: Options) -> dict[str, Any]:
    with work_dir(options.work_dir, options.keep, "tgw-chaos-") as work:
        say(f"work dir {work}; starting broker and database ...")
        services = FleetServices(
            work, timescaledb=storage_flag(options.storage), durable=options.durable
        )
        with services:
            say(f"broker accounts for {options.cars} + {options.replay_cars} cars ...")
            suite = ChaosSuite(options, services, work)
            try:
                suite.run()
            finally:
                if suite.results:
                    say("")
                    print_table(suite.results)
            figures = suite.summary()
            figures["timescaledb"] = services.timescaledb_enabled
    return figures | {
        "cars": options.cars,
        "instances": options.instances,
        "fleet_processes": options.processes,
        "phase_seconds": options.seconds,
        "outage_scale": round(options.scale, 3),
        "database_outage_s": options.database_outage_s,
        "offline_s": options.offline_s,
        "cpus": psutil.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    configure_logging("WARNING", json=False)
    stop_on_sigterm()
    started = time.monotonic()
    figures = run(options)
    figures["wall_seconds"] = round(time.monotonic() - started)
    finish(figures)
    clean = figures["lost"] == figures["duplicated"] == figures["duplicates_in_tables"] == 0
    return 0 if clean and figures["commands_unresolved"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
