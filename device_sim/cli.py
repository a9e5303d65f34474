"""`tgw sim`: run simulated cars and replay CAN logs (mounted by the root CLI via entry points).

This is device_sim's output layer: the only place that prints. Errors a person can fix are
one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from device_sim.errors import DeviceConfigurationError, DeviceError
from device_sim.fleet import Fleet, FleetFaults, FleetProgress
from device_sim.identity import fleet_vins, read_credentials, write_credentials
from device_sim.logconfig import configure_logging
from device_sim.profiles import SignalProfile, builtin_profile_names, load_profile
from device_sim.replay import replay_log
from device_sim.settings import SimSettings
from schemas.vin import VinError, parse_vin

__all__ = ["app"]

app = typer.Typer(
    name="sim",
    help="Simulated cars: one in-car unit, a fleet, or a recorded CAN log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

# -- shared options ---------------------------------------------------------------------------

HostOpt = Annotated[str | None, typer.Option("--host", help="Broker host [TGW_SIM_MQTT__HOST].")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Broker port [TGW_SIM_MQTT__PORT].")]
CredentialsOpt = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        help="CSV of vin,password (see `tgw sim credentials`) [TGW_SIM_FLEET__CREDENTIALS_FILE].",
    ),
]
QueueDirOpt = Annotated[
    Path | None,
    typer.Option("--queue-dir", help="Where the store-and-forward queues live [var/device]."),
]
DrivingIntervalOpt = Annotated[
    float | None, typer.Option("--driving-interval", help="Seconds between samples while driving.")
]
ParkedIntervalOpt = Annotated[
    float | None, typer.Option("--parked-interval", help="Seconds between samples while parked.")
]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR.")
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body: DeviceErrors and bad settings become one line on stderr, exit 1."""
    try:
        return action()
    except DeviceError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _fail(f"setting {where}: {first['msg']}") from None


def _settings(**sections: dict[str, Any]) -> SimSettings:
    # Only options given on the command line override the environment and the config file.
    cleaned = {
        name: {key: value for key, value in values.items() if value is not None}
        for name, values in sections.items()
    }
    return SimSettings(**{name: values for name, values in cleaned.items() if values})  # type: ignore[arg-type]


def _start_logging(settings: SimSettings, level: str | None) -> None:
    configure_logging(level or settings.log.level, json=settings.log.json_output)


# -- tgw sim car ------------------------------------------------------------------------------


@app.command()
def car(
    *,
    vin: Annotated[str, typer.Option("--vin", help="The car's VIN (its broker username).")],
    profile: Annotated[
        str | None, typer.Option("--profile", help="Vehicle profile name or .toml file.")
    ] = None,
    host: HostOpt = None,
    port: PortOpt = None,
    credentials: CredentialsOpt = None,
    drive: Annotated[bool, typer.Option("--drive", help="Rent the car out around Munich.")] = False,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    can_interface: Annotated[
        str | None, typer.Option("--can-interface", help="virtual (default) or socketcan.")
    ] = None,
    channel: Annotated[
        str | None, typer.Option("--channel", help="can0, vcan0, ... (virtual: any name).")
    ] = None,
    ecus: Annotated[
        bool, typer.Option("--ecus/--no-ecus", help="Simulate the car's ECUs on the bus.")
    ] = True,
    queue_dir: QueueDirOpt = None,
    driving_interval: DrivingIntervalOpt = None,
    parked_interval: ParkedIntervalOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run one car's telematics unit (and, unless --no-ecus, its simulated ECUs).

    The password comes from --credentials or TGW_SIM_MQTT__PASSWORD, never the command line.
    """

    def body() -> None:
        try:
            car_vin = parse_vin(vin)
        except VinError as exc:
            raise DeviceConfigurationError(f"--vin {vin!r}: {exc}") from exc
        settings = _settings(
            mqtt={"host": host, "port": port},
            can={"interface": can_interface, "channel": channel, "simulate_ecus": ecus},
            unit={
                "profile": profile,
                "queue_dir": queue_dir,
                "driving_interval_s": driving_interval,
                "parked_interval_s": parked_interval,
            },
        )
        _start_logging(settings, log_level)
        password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
        credentials_file = credentials or settings.fleet.credentials_file
        if credentials_file is not None:
            password = read_credentials(credentials_file).get(car_vin)
            if password is None:
                raise DeviceConfigurationError(f"{credentials_file} has no password for {car_vin}")
        from device_sim.app import run_car  # noqa: PLC0415  (keeps `tgw --help` fast)

        counters = asyncio.run(
            run_car(settings, vin=car_vin, password=password, drive=drive, duration_s=duration)
        )
        typer.echo(json.dumps({"vin": car_vin, **_counters(counters)}))

    _guarded(body)


def _counters(counters: object) -> dict[str, Any]:
    return {name: getattr(counters, name) for name in getattr(counters, "__dataclass_fields__", {})}


# -- tgw sim fleet ----------------------------------------------------------------------------


def _fleet(
    *,
    cars: int | None,
    city: str,
    seed: int | None,
    profiles: list[str] | None,
    host: str | None,
    port: int | None,
    credentials: Path | None,
    ledger: Path | None,
    duration: float | None,
    driving_share: float | None,
    driving_interval: float | None,
    parked_interval: float | None,
    connect_rate: float | None,
    connect_concurrency: int | None,
    queue_dir: Path | None,
    queue_max: int | None,
    progress_every: float,
    processes: int,
    faults: FleetFaults,
    log_level: str | None,
) -> None:
    def body() -> None:
        settings = _settings(
            mqtt={"host": host, "port": port},
            unit={
                "queue_dir": queue_dir,
                "queue_max_records": queue_max,
                "driving_interval_s": driving_interval if driving_interval is not None else 1.0,
                "parked_interval_s": parked_interval if parked_interval is not None else 60.0,
            },
            fleet={
                "cars": cars,
                "city": city,
                "seed": seed,
                "profiles": tuple(profiles) if profiles else None,
                "credentials_file": credentials,
                "ledger_file": ledger,
                "driving_share": driving_share,
                "connect_rate_per_s": connect_rate,
                "connect_concurrency": connect_concurrency,
            },
        )
        credentials_file = settings.fleet.credentials_file
        if credentials_file is None:
            raise DeviceConfigurationError(
                "a fleet needs --credentials FILE (write one with `tgw sim credentials`)"
            )
        level = log_level or "WARNING"
        _start_logging(settings, level)
        passwords = read_credentials(credentials_file)
        typer.echo(
            f"fleet: {settings.fleet.cars} cars, seed {settings.fleet.seed}, "
            f"broker {settings.mqtt.host}:{settings.mqtt.port}"
            + (f", {processes} processes" if processes > 1 else "")
            + (f", {duration:g} s" if duration else ", until Ctrl-C"),
            err=True,
        )
        if processes > 1:
            from device_sim.fleet_processes import run_fleet_processes  # noqa: PLC0415

            summary = run_fleet_processes(
                settings,
                passwords,
                processes=processes,
                faults=faults,
                duration_s=duration,
                on_progress=_print_progress,
                progress_interval_s=progress_every,
                log_level=level,
            )
            typer.echo(json.dumps(summary.as_dict()))
            return
        fleet = Fleet(
            settings,
            passwords,
            faults=faults,
            on_progress=_print_progress,
            progress_interval_s=progress_every,
        )

        async def main() -> dict[str, Any]:
            from device_sim.app import install_stop_signals  # noqa: PLC0415

            install_stop_signals(fleet.stop)
            summary = await fleet.run(duration)
            return summary.as_dict()

        typer.echo(json.dumps(asyncio.run(main())))

    _guarded(body)


def _print_progress(progress: FleetProgress) -> None:
    typer.echo(
        f"[{progress.elapsed_s:7.1f} s] connected {progress.connected}/{progress.cars}  "
        f"messages {progress.messages} ({progress.msgs_per_s}/s)  queued {progress.queued}  "
        f"cpu {progress.cpu_pct}%",
        err=True,
    )


@app.command()
def fleet(
    *,
    cars: Annotated[
        int | None, typer.Option("--cars", "--vehicles", "-n", help="How many cars.")
    ] = None,
    city: Annotated[str, typer.Option("--city", help="Where they drive (munich).")] = "munich",
    seed: Annotated[int | None, typer.Option("--seed", help="Same seed, same fleet.")] = None,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Vehicle profiles, used in turn.")
    ] = None,
    host: HostOpt = None,
    port: PortOpt = None,
    credentials: CredentialsOpt = None,
    ledger: Annotated[
        Path | None, typer.Option("--ledger", help="Record every acknowledged (vin, boot, seq).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    driving_share: Annotated[
        float | None, typer.Option("--driving-share", help="Share of time cars drive [0.35].")
    ] = None,
    driving_interval: DrivingIntervalOpt = None,
    parked_interval: ParkedIntervalOpt = None,
    connect_rate: Annotated[
        float | None, typer.Option("--connect-rate", help="Cars connecting per second [500].")
    ] = None,
    connect_concurrency: Annotated[
        int | None,
        typer.Option(
            "--connect-concurrency", help="Connection handshakes in progress at once [64]."
        ),
    ] = None,
    queue_dir: QueueDirOpt = None,
    queue_max: Annotated[
        int | None, typer.Option("--queue-max", help="Rows each car's queue holds [100000].")
    ] = None,
    progress_every: Annotated[
        float, typer.Option("--progress-every", help="Seconds between progress lines.")
    ] = 10.0,
    processes: Annotated[
        int,
        typer.Option(
            "--processes", min=1, max=64, help="Worker processes (one core and ~15k cars each)."
        ),
    ] = 1,
    drop_per_min: Annotated[
        float, typer.Option("--drop-per-min", help="Fault: share of cars dropped per minute.")
    ] = 0.0,
    dead_zone_share: Annotated[
        float, typer.Option("--dead-zone-share", help="Fault: share of cars losing coverage.")
    ] = 0.0,
    dead_zone_after: Annotated[
        float, typer.Option("--dead-zone-after", help="Fault: ... this many seconds in.")
    ] = 60.0,
    dead_zone_seconds: Annotated[
        float, typer.Option("--dead-zone-seconds", help="Fault: ... for this long.")
    ] = 300.0,
    duplicate_share: Annotated[
        float, typer.Option("--duplicate-share", help="Fault: share of messages sent twice.")
    ] = 0.0,
    malformed_share: Annotated[
        float,
        typer.Option("--malformed-share", help="Fault: share followed by a malformed message."),
    ] = 0.0,
    clock_skew_share: Annotated[
        float, typer.Option("--clock-skew-share", help="Fault: share of cars with a wrong clock.")
    ] = 0.0,
    clock_skew: Annotated[
        float, typer.Option("--clock-skew", help="Fault: ... off by this many seconds.")
    ] = 0.0,
    log_level: LogLevelOpt = None,
) -> None:
    """Run a fleet of simulated cars in this process, each with its own MQTT connection.

    Progress goes to stderr; the last line on stdout is a JSON summary.
    """
    faults = FleetFaults(
        drop_per_min=drop_per_min,
        dead_zone_share=dead_zone_share,
        dead_zone_after_s=dead_zone_after,
        dead_zone_s=dead_zone_seconds,
        duplicate_share=duplicate_share,
        malformed_share=malformed_share,
        clock_skew_share=clock_skew_share,
        clock_skew_s=clock_skew,
    )
    _fleet(
        cars=cars,
        city=city,
        seed=seed,
        profiles=profile,
        host=host,
        port=port,
        credentials=credentials,
        ledger=ledger,
        duration=duration,
        driving_share=driving_share,
        driving_interval=driving_interval,
        parked_interval=parked_interval,
        connect_rate=connect_rate,
        connect_concurrency=connect_concurrency,
        queue_dir=queue_dir,
        queue_max=queue_max,
        progress_every=progress_every,
        processes=processes,
        faults=faults,
        log_level=log_level,
    )


# `tgw sim run` is the name for the same thing.
app.command(name="run", help="Same as `tgw sim fleet`.")(fleet)


# -- tgw sim credentials / profiles / replay --------------------------------------------------


@app.command()
def credentials(
    out: Annotated[Path, typer.Option("--out", help="The credentials file to write (0600).")],
    cars: Annotated[int, typer.Option("--cars", "--vehicles", "-n", help="How many cars.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="The fleet's seed.")] = 1,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Vehicle profiles, used in turn.")
    ] = None,
) -> None:
    """Write VINs and fresh passwords for a fleet; create the broker accounts from this file.

    The VINs are the ones `tgw sim fleet` uses with the same --cars, --seed and --profile.
    Passwords of VINs already in the file are kept.
    """

    def body() -> None:
        profiles = tuple(profile) if profile else SimSettings().fleet.profiles
        existing = read_credentials(out) if out.exists() else {}
        vins = [vin for vin, _ in fleet_vins(cars, seed, profiles)]
        written = write_credentials(out, vins, existing)
        typer.echo(f"wrote {written} cars to {out}", err=True)

    _guarded(body)


@app.command()
def profiles() -> None:
    """List the built-in vehicle profiles: signals read and commands supported."""

    def body() -> None:
        for name in builtin_profile_names():
            loaded = load_profile(name)
            typer.echo(f"{name}: {loaded.description}")
            typer.echo(f"  signals:  {', '.join(sorted(loaded.wire_signals))}")
            typer.echo(f"  commands: {', '.join(loaded.capabilities)}")

    _guarded(body)


@app.command()
def replay(
    log_file: Annotated[Path, typer.Argument(help="candump .log, .asc, .blf, .trc or .csv")],
    *,
    profile: Annotated[str, typer.Option("--profile", help="Vehicle profile name or .toml.")],
    vin: Annotated[
        str, typer.Option("--vin", help="The car's VIN (its broker username).")
    ] = "TGWREPLAY00000001",
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds of log time between samples.")
    ] = 1.0,
    speed: Annotated[
        float,
        typer.Option(
            "--speed", min=0.0, help="1 plays in real time, 10 ten times faster; 0: at once."
        ),
    ] = 0.0,
    print_only: Annotated[
        bool,
        typer.Option(
            "--print", help="Only decode: print protocol v1 messages as JSON lines, no broker."
        ),
    ] = False,
    host: HostOpt = None,
    port: PortOpt = None,
    credentials: CredentialsOpt = None,
    queue_dir: QueueDirOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Play a recorded CAN log through an in-car unit, which publishes through the broker.

    The unit decodes the frames with the profile and publishes telemetry and events under
    its VIN, like `tgw sim car` (same broker and identity options; the password comes from
    --credentials or TGW_SIM_MQTT__PASSWORD). Timestamps are the log's, moved so that it ends
    now. A JSON summary is the last stdout line. With --print nothing is published: each
    message is printed as {"topic_kind": ..., "payload": {...}}, frame statistics go to stderr.
    """

    def body() -> None:
        try:
            car_vin = parse_vin(vin)
        except VinError as exc:
            raise DeviceConfigurationError(f"--vin {vin!r}: {exc}") from exc
        loaded = load_profile(profile)
        if not log_file.is_file():
            raise DeviceConfigurationError(f"CAN log {log_file} does not exist")
        if print_only:
            _print_replay(log_file, loaded, car_vin, interval)
            return
        settings = _settings(
            mqtt={"host": host, "port": port},
            unit={"profile": profile, "queue_dir": queue_dir},
        )
        _start_logging(settings, log_level or "WARNING")
        password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
        credentials_file = credentials or settings.fleet.credentials_file
        if credentials_file is not None:
            password = read_credentials(credentials_file).get(car_vin)
            if password is None:
                raise DeviceConfigurationError(f"{credentials_file} has no password for {car_vin}")
        if password is None:
            raise DeviceConfigurationError(
                f"replaying through the broker needs the password of {car_vin}: --credentials "
                "FILE or TGW_SIM_MQTT__PASSWORD (or --print to decode without a broker)"
            )
        from device_sim.app import run_replay  # noqa: PLC0415  (keeps `tgw --help` fast)

        summary = asyncio.run(
            run_replay(
                settings, log_file, vin=car_vin, password=password, interval_s=interval, speed=speed
            )
        )
        typer.echo(
            json.dumps(
                {
                    "vin": car_vin,
                    "frames_played": summary.frames_played,
                    "frames": _counters(summary.frames),
                    **_counters(summary.unit),
                    "queued": summary.queued,
                }
            )
        )

    _guarded(body)


def _print_replay(log_file: Path, loaded: SignalProfile, vin: str, interval: float) -> None:
    from device_sim.codec import DecodeCounters  # noqa: PLC0415

    counters = DecodeCounters()
    for message in replay_log(log_file, loaded, vin=vin, interval_s=interval, counters=counters):
        sys.stdout.write(
            f'{{"topic_kind":"{message.kind.value}","payload":{message.payload}}}{os.linesep}'
        )
    typer.echo(json.dumps({"frames": _counters(counters)}), err=True)
