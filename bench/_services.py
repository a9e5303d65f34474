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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench._lifetime import DATABASE, StartedInOrder, enrol_fleet, start_database
from device_sim.identity import read_credentials
from gateway.auth import Role, TokenError, TokenStore
from gateway.commands import create_key_pair
from gateway.devstack import BrokerAccount, MosquittoBroker, PostgresServer
from gateway.storage import connect

__all__ = ["DATABASE", "FleetAccounts", "FleetServices"]

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
class FleetServices(StartedInOrder):
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

    def _start(self) -> None:
        self.postgres, self.dsn = start_database(
            self._exit, self.work_dir, timescaledb=self.timescaledb, durable=self.durable
        )
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
        vins = enrol_fleet(self.broker, path, cars, seed)
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
