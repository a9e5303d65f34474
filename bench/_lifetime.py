"""What the benchmarks' service bundles share: starting parts in order, the database, a fleet's
broker accounts.

`bench._stack.BenchStack` (plain-socket cars), `bench._services.FleetServices` (device_sim's
fleet) and `bench._fleet_broker.FleetBroker` (a broker alone) each start a few services into an
`ExitStack`; what one started is stopped in reverse order, also when a later one fails to start.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import psycopg

from device_sim.identity import fleet_vins, read_credentials, write_credentials
from device_sim.settings import FleetSettings
from gateway.devstack import MosquittoBroker, PostgresServer
from gateway.devstack.mosquitto import (
    CAR_ROLE,
    mosquitto_password_hash,
    read_password_file,
    write_password_file,
)
from gateway.storage import apply_migrations

__all__ = ["DATABASE", "StartedInOrder", "enrol_fleet", "start_database"]

DATABASE = "tgw_bench"


class StartedInOrder:
    """A sync context manager over `_start`, which enters each service into `self._exit`."""

    _exit: ExitStack

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit.close()

    def _start(self) -> None:
        raise NotImplementedError


def start_database(
    parts: ExitStack, work_dir: Path, *, timescaledb: bool | None, durable: bool
) -> tuple[PostgresServer, str]:
    """PostgreSQL in `work_dir/pgdata` (stopped with `parts`) and the migrated bench database.

    `track_commit_timestamp` is on, so that latency is read from each row's real commit time;
    `timescaledb` True/False forces the storage mode, None uses TimescaleDB when installed.
    """
    postgres = parts.enter_context(
        PostgresServer(work_dir / "pgdata", timescaledb=timescaledb, durable=durable)
    )
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    postgres.restart()  # track_commit_timestamp takes effect at start only
    dsn = postgres.create_database(DATABASE)
    mode: Literal["auto", "timescaledb", "postgres"] = (
        "auto" if timescaledb is None else "timescaledb" if timescaledb else "postgres"
    )
    asyncio.run(apply_migrations(dsn, storage_mode=mode))
    return postgres, dsn


def enrol_fleet(broker: MosquittoBroker, credentials: Path, cars: int, seed: int) -> list[str]:
    """Broker accounts for the fleet `tgw sim fleet --cars cars --seed seed` runs; its VINs.

    The passwords go to `credentials` (the file the fleet reads; existing ones are kept), their
    hashes to the broker's password file, and every car becomes a dynamic-security client with
    the car role (its subscribe ACL), as in production. Both files are written while the broker
    is stopped, then it starts again: the plugin's admin API rewrites its whole file per client,
    which takes minutes for 20,000 cars (and times out).
    """
    vins = [vin for vin, _ in fleet_vins(cars, seed, FleetSettings().profiles)]
    known_passwords = read_credentials(credentials) if credentials.exists() else None
    write_credentials(credentials, vins, known_passwords)
    passwords = read_credentials(credentials)
    broker.stop()
    entries = read_password_file(broker.password_file)
    entries.update({vin: mosquitto_password_hash(passwords[vin]) for vin in vins})
    write_password_file(broker.password_file, entries, None)
    dynsec = json.loads(broker.dynsec_file.read_text(encoding="utf-8"))
    known = {client["username"] for client in dynsec["clients"]}
    dynsec["clients"] += [
        {"username": vin, "roles": [{"rolename": CAR_ROLE}]} for vin in vins if vin not in known
    ]
    broker.dynsec_file.write_text(json.dumps(dynsec, indent=1), encoding="utf-8")
    broker.start()
    return vins
