"""The services of a fleet-driven benchmark (chaos, storm, soak): broker, database, accounts.

Like `bench._stack.BenchStack`, but for the simulated fleet of `device_sim` instead of the
plain-socket load generator: the car accounts are the fleet's own (VINs from its seed, written
to a credentials file `tgw sim fleet --credentials` reads), and it also makes what the command
path needs (a signing key and an operator token). PostgreSQL runs durable unless asked
otherwise, with `track_commit_timestamp` on, so latency is read from each row's commit time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import psycopg

from device_sim.identity import fleet_vins, read_credentials, write_credentials
from device_sim.settings import FleetSettings
from gateway.auth import Role, TokenError, TokenStore
from gateway.commands import create_key_pair
from gateway.devstack import BrokerAccount, MosquittoBroker, PostgresServer
from gateway.devstack.mosquitto import (
    CAR_ROLE,
    mosquitto_password_hash,
    read_password_file,
    write_password_file,
)
from gateway.storage import apply_migrations, connect

__all__ = ["DATABASE", "FleetAccounts", "FleetServices"]

DATABASE = "tgw_bench"
KEY_ID = "tgw-bench"
TOKEN_NAME = "bench-operator"  # the token's name, not a secret


@dataclass(frozen=True, slots=True)
class FleetAccounts:
    """A simulated fleet's identity: `tgw sim fleet --cars N --seed S` and its credentials."""

    cars: int
    seed: int
    credentials: Path
    vins: tuple[str, ...]


@dataclass
class FleetServices:
    """Broker + database in `work_dir` (a sync context manager), migrated.

    Args:
        work_dir: where both keep their files.
        timescaledb: True/False forces the storage mode; None uses TimescaleDB when installed.
        durable: fsync and synchronous commit on (as in production).
    """

    work_dir: Path
    timescaledb: bool | None = None
    durable: bool = True
    broker: MosquittoBroker = field(init=False)
    postgres: PostgresServer = field(init=False)
    dsn: str = field(init=False)
    _exit: ExitStack = field(init=False, default_factory=ExitStack)

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
        self.postgres = self._exit.enter_context(
            PostgresServer(
                self.work_dir / "pgdata", timescaledb=self.timescaledb, durable=self.durable
            )
        )
        with psycopg.connect(self.postgres.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        self.postgres.restart()  # track_commit_timestamp takes effect at start only
        self.dsn = self.postgres.create_database(DATABASE)
        mode: Literal["auto", "timescaledb", "postgres"] = (
            "auto"
            if self.timescaledb is None
            else "timescaledb"
            if self.timescaledb
            else "postgres"
        )
        asyncio.run(apply_migrations(self.dsn, storage_mode=mode))
        # Generous: with 20,000 dynamic-security clients Mosquitto 2.0.11 needs about a minute
        # to load its plugin file before it accepts connections.
        self.broker = self._exit.enter_context(
            MosquittoBroker(self.work_dir / "mosquitto", start_timeout_s=300.0)
        )

    @property
    def timescaledb_enabled(self) -> bool:
        return self.postgres.timescaledb_enabled

    def add_fleet(self, cars: int, seed: int, *, name: str = "fleet") -> FleetAccounts:
        """Broker accounts for the fleet `tgw sim fleet --cars cars --seed seed` runs, and the
        credentials file it reads (`<work_dir>/<name>.csv`).

        Every car is also a dynamic-security client with the car role (its subscribe ACL), as
        in production. Both files are written while the broker is stopped, then it starts
        again: the plugin's admin API rewrites its whole file per client, which takes minutes
        for 20,000 cars (and times out)."""
        path = self.work_dir / f"{name}.csv"
        vins = [vin for vin, _ in fleet_vins(cars, seed, FleetSettings().profiles)]
        write_credentials(path, vins, read_credentials(path) if path.exists() else None)
        passwords = read_credentials(path)
        broker = self.broker
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
        return FleetAccounts(cars, seed, path, tuple(vins))

    def car_account(self, fleet: FleetAccounts, vin: str) -> BrokerAccount:
        password = read_credentials(fleet.credentials)[vin]
        return BrokerAccount(vin, password, self.broker.host, self.broker.port)

    def add_gateway(self, username: str, password: str | None = None) -> BrokerAccount:
        """An account with the gateway's rights (one per gateway instance or subscriber)."""
        password = self.broker.add_gateway(username, password)
        return BrokerAccount(username, password, self.broker.host, self.broker.port)

    def signing_key(self) -> Path:
        """The command-signing key file (made once)."""
        keys = self.work_dir / "keys"
        private = keys / f"{KEY_ID}.key"
        if not private.exists():
            create_key_pair(keys, KEY_ID)
        return private

    def operator_token(self) -> str:
        """A fresh operator token for the API (a previous one of the same name is revoked)."""

        async def create() -> str:
            async with await connect(self.dsn) as conn:
                store = TokenStore(conn)
                with contextlib.suppress(TokenError):
                    await store.revoke(TOKEN_NAME, revoked_by="bench")
                _, secret = await store.create(TOKEN_NAME, Role.OPERATOR, created_by="bench")
                return secret

        return asyncio.run(create())
