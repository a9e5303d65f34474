"""`tgw dev`: the private broker and database of the demo, kept in ./.tgw/ between runs.

`tgw dev up` starts Mosquitto (rendered from the repository's mosquitto.conf and ACL) and
PostgreSQL (TimescaleDB preloaded when installed), migrates the `tgw` database, writes the
gateway's credentials to .tgw/credentials.toml (mode 0600, usable as TGW_CONFIG), says what runs
where, and stops both cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal
from urllib.parse import urlsplit

import psycopg
import typer

from gateway.commands import create_key_pair
from gateway.devstack import (
    DEFAULT_GATEWAY_USERNAME,
    MosquittoBroker,
    PostgresServer,
    port_is_free,
)
from gateway.devstack.postgres import random_password
from gateway.errors import DevStackError
from gateway.logconfig import configure_logging

__all__ = [
    "SIGNING_KEY_ID",
    "DevStack",
    "app",
    "dev_signing_key",
    "dev_stack",
    "storage_choice",
    "wait_for_stop",
]

app = typer.Typer(
    help="Private development services (broker and database) for the demo.",
    no_args_is_help=True,
)


@app.callback()
def dev() -> None:
    """Private development services (broker and database) for the demo."""


DEFAULT_MQTT_PORT = 18830
DEFAULT_PG_PORT = 15432
DATABASE = "tgw"
StorageChoice = Literal["auto", "timescaledb", "postgres"]


def _default_state_dir() -> Path:
    # A source checkout keeps its state beside the code, whatever the working directory.
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / ".tgw"


@dataclass(frozen=True, slots=True)
class _Saved:
    """Secrets of an earlier run, so the broker account and the cluster stay usable."""

    gateway_password: str | None
    pg_password: str | None


def _read_saved(path: Path) -> _Saved:
    if not path.is_file():
        return _Saved(None, None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        mqtt, database = data.get("mqtt", {}), data.get("database", {})
        return _Saved(mqtt.get("password"), urlsplit(database.get("dsn", "")).password)
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise DevStackError(f"{path} is unreadable ({exc}): fix or delete it") from exc


SIGNING_KEY_ID = "tgw-demo"
"""The command-signing key of the dev stack (and the demo): `<state dir>/keys/tgw-demo.key`."""


def dev_signing_key(keys_dir: Path) -> Path:
    """The dev stack's command-signing key, created on first use; its private key file."""
    private = keys_dir / f"{SIGNING_KEY_ID}.key"
    if not private.exists():
        create_key_pair(keys_dir, SIGNING_KEY_ID)
    return private


def _write_credentials(
    path: Path, broker: MosquittoBroker, dsn: str, storage: StorageChoice, signing_key: Path
) -> None:
    # Laid out like gateway.config.Settings, so TGW_CONFIG=<this file> points the gateway here.
    text = (
        "# Written by `tgw dev up`: the demo's broker and database. Secret: keep it 0600.\n"
        "# Use it as the gateway's configuration: TGW_CONFIG=.tgw/credentials.toml\n\n"
        "[mqtt]\n"
        f"host = {json.dumps(broker.host)}\n"
        f"port = {broker.port}\n"
        f"username = {json.dumps(broker.gateway_username)}\n"
        f"password = {json.dumps(broker.gateway_password)}\n\n"
        "[database]\n"
        f"dsn = {json.dumps(dsn)}\n"
        f"storage_mode = {json.dumps(storage)}\n\n"
        # What `tgw provision` changes: this broker's files, reloaded through its pid file,
        # and its dynamic-security plugin (the admin password is new with every start).
        "[broker]\n"
        f"password_file = {json.dumps(str(broker.password_file))}\n"
        f"acl_file = {json.dumps(str(broker.acl_file))}\n"
        'reload = "pid_file"\n'
        f"pid_file = {json.dumps(str(broker.pid_file))}\n"
        f"admin_password = {json.dumps(broker.admin_account.password)}\n\n"
        "[commands]\n"
        f"signing_key_file = {json.dumps(str(signing_key))}\n"
        f"signing_key_id = {json.dumps(SIGNING_KEY_ID)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # also when the file existed with looser permissions


def _migrate(dsn: str, storage: StorageChoice) -> list[str]:
    try:
        from gateway.storage.migrate import apply_migrations  # noqa: PLC0415 - optional piece
    except ImportError:
        return []
    return asyncio.run(apply_migrations(dsn, storage_mode=storage))


def _storage_in_use(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    return f"TimescaleDB {row[0]} hypertables" if row else "plain PostgreSQL, native partitions"


def _check_port(port: int, option: str) -> None:
    if not port_is_free(port):
        raise DevStackError(
            f"port {port} on 127.0.0.1 is in use (another `tgw dev up`?): stop what listens "
            f"there, or choose another port with {option}"
        )


def wait_for_stop(broker: MosquittoBroker) -> None:
    """Block until Ctrl-C or SIGTERM; fail if the broker dies meanwhile."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A bounded wait doubling as a watch on the broker process.
        while not stop.wait(timeout=1.0):
            if not broker.running:
                raise DevStackError(f"Mosquitto exited unexpectedly; see {broker.log_file}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, slots=True)
class DevStack:
    """The running broker and database of `dev_stack`, and where their files are."""

    state_dir: Path
    broker: MosquittoBroker
    pg: PostgresServer
    dsn: str
    credentials: Path
    applied: list[str]


@contextmanager
def dev_stack(
    state_dir: Path,
    *,
    mqtt_port: int = DEFAULT_MQTT_PORT,
    pg_port: int = DEFAULT_PG_PORT,
    storage: StorageChoice = "auto",
) -> Iterator[DevStack]:
    """Start Mosquitto and PostgreSQL in `state_dir`, migrate, write credentials.toml; stop both
    (PostgreSQL first, then Mosquitto) when the block ends. Shared by `tgw dev up` and `tgw demo`.

    Raises:
        DevStackError: a port is taken, the saved state is inconsistent, or a service fails.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    credentials = state_dir / "credentials.toml"
    saved = _read_saved(credentials)
    pg_dir = state_dir / "postgres"
    if (pg_dir / "PG_VERSION").exists() and saved.pg_password is None:
        raise DevStackError(
            f"{pg_dir} holds a database whose password was in {credentials}, which is gone: "
            f"delete {pg_dir} (its data is lost) to start over"
        )
    _check_port(mqtt_port, "--mqtt-port")

    with ExitStack() as services:
        broker = MosquittoBroker(
            state_dir / "mosquitto",
            mqtt_port,
            gateway_username=DEFAULT_GATEWAY_USERNAME,
            gateway_password=saved.gateway_password,
        )
        services.enter_context(broker)
        pg = PostgresServer(
            pg_dir,
            pg_port,
            timescaledb={"auto": None, "timescaledb": True, "postgres": False}[storage],
            password=saved.pg_password or random_password(),
        )
        if pg.running:
            pg.stop()  # left over from a run that was killed: restart it with today's settings
        _check_port(pg_port, "--pg-port")
        services.enter_context(pg)
        if not pg.database_exists(DATABASE):
            pg.create_database(DATABASE)
        dsn = pg.dsn(DATABASE)
        key = dev_signing_key(state_dir / "keys")
        _write_credentials(credentials, broker, dsn, storage, key)
        applied = _migrate(dsn, storage)
        yield DevStack(state_dir, broker, pg, dsn, credentials, applied)


def storage_choice(storage: str) -> StorageChoice:
    """The --storage option, checked."""
    if storage not in ("auto", "timescaledb", "postgres"):
        raise typer.BadParameter("use auto, timescaledb or postgres", param_hint="--storage")
    return storage  # type: ignore[return-value]  # checked just above


@app.command()
def up(
    state_dir: Annotated[
        Path, typer.Option("--dir", help="Where broker and database keep their files.")
    ] = _default_state_dir(),  # noqa: B008 - typer reads defaults once, at definition
    mqtt_port: Annotated[int, typer.Option(help="MQTT port on 127.0.0.1.")] = DEFAULT_MQTT_PORT,
    pg_port: Annotated[int, typer.Option(help="PostgreSQL port on 127.0.0.1.")] = DEFAULT_PG_PORT,
    storage: Annotated[
        str, typer.Option(help="auto (TimescaleDB when installed), timescaledb or postgres.")
    ] = "auto",
) -> None:
    """Start the demo's broker and database, migrate, say what runs where; Ctrl-C stops all."""
    mode = storage_choice(storage)
    configure_logging("WARNING")
    with dev_stack(state_dir, mqtt_port=mqtt_port, pg_port=pg_port, storage=mode) as stack:
        _print_summary(stack.state_dir, stack.broker, stack.pg, stack.dsn, stack.applied)
        wait_for_stop(stack.broker)
        typer.echo("\ntgw dev: stopping PostgreSQL, then Mosquitto ...")
    typer.echo("tgw dev: stopped.")


def _print_summary(
    state_dir: Path, broker: MosquittoBroker, pg: PostgresServer, dsn: str, applied: list[str]
) -> None:
    def rel(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    shown_dsn = (
        dsn.replace(f":{urlsplit(dsn).password}@", ":***@") if urlsplit(dsn).password else dsn
    )
    migrations = f"applied now: {', '.join(applied)}" if applied else "schema up to date"
    credentials = rel(state_dir / "credentials.toml")
    lines = [
        "tgw dev: running. Ctrl-C stops everything.",
        "",
        f"  MQTT broker   mqtt://{broker.host}:{broker.port}  (Mosquitto; MQTT 5; no anonymous)",
        f"    gateway     user {broker.gateway_username}, password in {credentials}",
        f"    config      {rel(broker.config_file)} + {rel(broker.acl_file)}",
        f"    log         {rel(broker.log_file)}",
        f"  PostgreSQL    {shown_dsn}",
        f"    storage     {_storage_in_use(dsn)}",
        f"    migrations  {migrations}",
        f"    log         {rel(pg.log_file)}",
        "",
        f"  Gateway settings for these services: TGW_CONFIG={credentials}",
    ]
    typer.echo("\n".join(lines))
