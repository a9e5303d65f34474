"""`tgw demo`: the whole product on this machine with one command (`make demo`).

Order of start: broker + database (the `tgw dev` stack, kept in ./.tgw), a signing key, broker
accounts for the fleet, the gateway (`tgw gateway run` as a child process), an operator token,
the simulated fleet (`tgw sim fleet` as a child process: gateway never imports device_sim).
Ctrl-C or SIGTERM stops them in reverse: fleet, gateway, database, broker.

Files in the state directory: credentials.toml (broker + database, 0600), fleet.csv (the cars'
passwords, 0600), keys/ (the command-signing key), logs/gateway.log and logs/fleet.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Annotated

import httpx
import psycopg
import typer

from gateway.auth import Role, TokenError, TokenStore
from gateway.cli.dev import (
    DEFAULT_MQTT_PORT,
    DEFAULT_PG_PORT,
    SIGNING_KEY_ID,
    DevStack,
    _default_state_dir,
    dev_signing_key,
    dev_stack,
    storage_choice,
)
from gateway.commands import load_signing_key
from gateway.devstack import port_is_free
from gateway.devstack.mosquitto import read_password_file
from gateway.errors import DevStackError
from gateway.logconfig import configure_logging
from gateway.storage import connect

__all__ = ["demo"]

DEFAULT_HTTP_PORT = 8080
TOKEN_NAME = "demo-operator"  # noqa: S105  # the token's name, not a secret
START_TIMEOUT_S = 60.0
# Beyond the gateway's own 30 s budget to flush and commit what it received.
STOP_TIMEOUT_S = 45.0
# The child is the ordinary `tgw` entry point (plugins such as `tgw sim` included).
_TGW = [
    sys.executable,
    "-c",
    "import sys; from gateway.cli import main; sys.argv[0] = 'tgw'; main()",
]


class _Stop(Exception):  # noqa: N818  # control flow: Ctrl-C or SIGTERM arrived
    pass


def _step(number: int, total: int, text: str) -> None:
    typer.secho(f"[{number}/{total}] {text}", fg=typer.colors.CYAN, err=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in text[-lines:])


class _Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log_file: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_file.open("ab")
        self.process = subprocess.Popen(  # noqa: S603  # our own entry point, fixed arguments
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                typer.echo(f"tgw demo: {self.name} did not stop in {timeout_s:g} s: killing it")
                self.process.kill()
                self.process.wait()
        self._log.close()

    def failure(self) -> DevStackError:
        return DevStackError(
            f"the {self.name} exited (status {self.process.returncode}); "
            f"the end of {self.log_file}:\n{_tail(self.log_file)}"
        )


@contextmanager
def _child(name: str, args: list[str], log_file: Path, env: dict[str, str]) -> Iterator[_Child]:
    child = _Child(name, args, log_file, env)
    try:
        yield child
    finally:
        typer.echo(f"tgw demo: stopping the {name} ...", err=True)
        child.stop()


@contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fleet_credentials(
    stack: DevStack, cars: int, seed: int, env: dict[str, str], stop: threading.Event
) -> tuple[Path, int]:
    """Write fleet.csv (through `tgw sim credentials`) and create the missing broker accounts."""
    path = stack.state_dir / "fleet.csv"
    result = subprocess.run(  # noqa: S603  # our own entry point, fixed arguments
        [*_TGW, "sim", "credentials", "--out", str(path), "--cars", str(cars), "--seed", str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DevStackError(f"`tgw sim credentials` failed: {result.stderr.strip()}")
    wanted = _read_fleet_csv(path)
    known = read_password_file(stack.broker.password_file)
    missing = [vin for vin in wanted if vin not in known]
    for done, vin in enumerate(missing, start=1):
        if stop.is_set():
            raise _Stop
        stack.broker.add_car(vin, wanted[vin])
        if done % 50 == 0 or done == len(missing):
            typer.echo(f"      broker accounts: {done}/{len(missing)}", err=True)
    return path, len(wanted)


def _read_fleet_csv(path: Path) -> dict[str, str]:
    # The format of device_sim.identity (vin,password per line), read here without importing it.
    accounts: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        vin, _, password = line.strip().partition(",")
        if vin and password and not vin.startswith("#") and vin.lower() != "vin":
            accounts[vin] = password
    return accounts


def _wait_healthy(url: str, gateway: _Child, stop: threading.Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if stop.is_set():
            raise _Stop
        if not gateway.running:
            raise gateway.failure()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        stop.wait(0.25)
    raise DevStackError(
        f"the gateway did not become healthy at {url} within {START_TIMEOUT_S:g} s; "
        f"see {gateway.log_file}:\n{_tail(gateway.log_file)}"
    )


async def _operator_token(dsn: str) -> str:
    async with await connect(dsn) as conn:
        store = TokenStore(conn)
        with contextlib.suppress(TokenError):  # the first run: there is none yet
            await store.revoke(TOKEN_NAME, revoked_by="tgw-demo")
        _, secret = await store.create(TOKEN_NAME, Role.OPERATOR, created_by="tgw-demo")
        return secret


def _online_cars(dsn: str) -> tuple[int, int]:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE online AND NOT stale), count(*) FROM vehicles"
            ).fetchone()
    except psycopg.Error:
        return (-1, -1)
    assert row is not None
    return int(row[0]), int(row[1])


def demo(
    *,
    cars: Annotated[int, typer.Option(min=1, max=10_000, help="Simulated cars.")] = 200,
    seed: Annotated[int, typer.Option(help="The fleet's seed: same seed, same cars.")] = 1,
    http_port: Annotated[
        int, typer.Option(help="Console and API port on the host.")
    ] = DEFAULT_HTTP_PORT,
    host: Annotated[
        str, typer.Option(help="Address the console listens on (0.0.0.0: reachable on the LAN).")
    ] = "127.0.0.1",
    state_dir: Annotated[
        Path, typer.Option("--dir", help="Where broker, database and keys keep their files.")
    ] = _default_state_dir(),  # noqa: B008 - typer reads defaults once, at definition
    mqtt_port: Annotated[int, typer.Option(help="MQTT port on 127.0.0.1.")] = DEFAULT_MQTT_PORT,
    pg_port: Annotated[int, typer.Option(help="PostgreSQL port on 127.0.0.1.")] = DEFAULT_PG_PORT,
    storage: Annotated[
        str, typer.Option(help="auto (TimescaleDB when installed), timescaledb or postgres.")
    ] = "auto",
    status_every: Annotated[float, typer.Option(help="Seconds between status lines.")] = 30.0,
) -> None:
    """Run everything: broker, database, gateway, simulated cars in Munich, and the console.

    Prints the console's address and an operator token; Ctrl-C stops it all cleanly.
    """
    mode = storage_choice(storage)
    configure_logging("WARNING")
    if not port_is_free(http_port):
        raise DevStackError(
            f"port {http_port} is in use: stop what listens there or pass --http-port PORT"
        )
    stop = threading.Event()
    total = 6
    with _signals_stop(stop):
        try:
            _step(1, total, f"broker and database (in {state_dir}, kept between runs) ...")
            with dev_stack(state_dir, mqtt_port=mqtt_port, pg_port=pg_port, storage=mode) as stack:
                _run(
                    stack,
                    cars=cars,
                    seed=seed,
                    http_port=http_port,
                    host=host,
                    status_every=status_every,
                    stop=stop,
                )
                typer.echo("tgw demo: stopping PostgreSQL, then Mosquitto ...", err=True)
        except _Stop:
            typer.echo("tgw demo: stopped before it was up.", err=True)
            return
    typer.echo("tgw demo: stopped.", err=True)


def _run(
    stack: DevStack,
    *,
    cars: int,
    seed: int,
    http_port: int,
    host: str,
    status_every: float,
    stop: threading.Event,
) -> None:
    total = 6
    logs = stack.state_dir / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TGW_", "TGW_SIM_"))}
    _step(2, total, "command-signing key ...")
    key = dev_signing_key(stack.state_dir / "keys")
    _step(3, total, f"broker accounts for {cars} cars ...")
    fleet_csv, count = _fleet_credentials(stack, cars, seed, env, stop)
    _step(4, total, f"gateway on http://{host}:{http_port} (log: {logs / 'gateway.log'}) ...")
    gateway_env = env | {
        "TGW_CONFIG": str(stack.credentials),
        "TGW_HTTP__HOST": host,
        "TGW_HTTP__PORT": str(http_port),
        "TGW_COMMANDS__SIGNING_KEY_FILE": str(key),
        "TGW_LOG__JSON_OUTPUT": "true",
    }
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104  # an address to reach
    base = f"http://{reach}:{http_port}"
    with _child("gateway", [*_TGW, "gateway", "run"], logs / "gateway.log", gateway_env) as gw:
        _wait_healthy(f"{base}/health", gw, stop)
        _step(5, total, "operator token ...")
        token = asyncio.run(_operator_token(stack.dsn))
        _step(6, total, f"{count} simulated cars in Munich (log: {logs / 'fleet.log'}) ...")
        fleet_args = [
            *_TGW, "sim", "fleet", "--cars", str(count), "--seed", str(seed),
            "--host", stack.broker.host, "--port", str(stack.broker.port),
            "--credentials", str(fleet_csv), "--queue-dir", str(stack.state_dir / "device"),
            "--progress-every", "60",
        ]  # fmt: skip
        # The cars trust the demo's signing key: a command not signed by it is refused.
        trust = json.dumps({SIGNING_KEY_ID: load_signing_key(key, SIGNING_KEY_ID).public_hex})
        fleet_env = env | {"TGW_SIM_COMMANDS__TRUSTED_KEYS": trust}
        with _child("fleet", fleet_args, logs / "fleet.log", fleet_env) as fleet:
            _print_ready(base, token, stack)
            _watch(stack, (gw, fleet), status_every, stop)


def _print_ready(base: str, token: str, stack: DevStack) -> None:
    lines = [
        "",
        "tgw demo: running. Ctrl-C stops everything.",
        "",
        f"  Console     {base}/console/#token={token}",
        f"              (or open {base}/ and sign in with the token below)",
        f"  Token       {token}   (operator: sees everything, locks and unlocks)",
        f"  API         {base}/v1/openapi.json   (Authorization: Bearer <token>)",
        f"  Terminal    TGW_API_URL={base} TGW_API_TOKEN=<token> tgw watch",
        f"  Broker      mqtt://{stack.broker.host}:{stack.broker.port}",
        f"  Database    TGW_CONFIG={stack.credentials} tgw db status",
        "",
    ]
    typer.echo("\n".join(lines))


def _watch(
    stack: DevStack, children: tuple[_Child, ...], status_every: float, stop: threading.Event
) -> None:
    """Until Ctrl-C: fail if a child dies; a status line now and then."""
    next_status = time.monotonic() + min(status_every, 10.0)
    while not stop.wait(1.0):
        for child in children:
            if not child.running:
                raise child.failure()
        if not stack.broker.running:
            raise DevStackError(f"Mosquitto exited unexpectedly; see {stack.broker.log_file}")
        if time.monotonic() >= next_status:
            online, known = _online_cars(stack.dsn)
            typer.echo(f"tgw demo: {online} of {known} cars online", err=True)
            next_status = time.monotonic() + status_every
    typer.echo("", err=True)
