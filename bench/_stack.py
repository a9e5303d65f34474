"""The private services a benchmark runs against: Mosquitto and PostgreSQL/TimescaleDB.

Both come from `gateway.devstack`, rendered from the repository's production configuration
(mosquitto.conf, mosquitto.acl). PostgreSQL runs durable (fsync and synchronous commit on),
as in production, unless asked otherwise, and with `track_commit_timestamp` on, so that the
publish-to-commit latency is read from each row's real commit time.
"""

from __future__ import annotations

import random
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench._lifetime import StartedInOrder, start_database
from gateway.devstack import BrokerAccount, MosquittoBroker, PostgresServer, random_vin
from gateway.devstack.mosquitto import (
    mosquitto_password_hash,
    read_password_file,
    write_password_file,
)

__all__ = ["BenchStack", "GatewayAccounts"]

GATEWAY_USERNAME = "tgw-bench"


@dataclass(frozen=True, slots=True)
class GatewayAccounts:
    """The broker accounts `tgw gateway run --workers N` uses: `<username>-<i>` for N > 1."""

    username: str
    password: str
    workers: int

    @property
    def usernames(self) -> list[str]:
        if self.workers == 1:
            return [self.username]
        return [f"{self.username}-{i}" for i in range(1, self.workers + 1)]


@dataclass
class BenchStack(StartedInOrder):
    """Broker + database in `work_dir`, migrated, with `cars` car accounts provisioned."""

    work_dir: Path
    cars: int
    durable: bool = True
    seed: int = 1
    broker: MosquittoBroker = field(init=False)
    postgres: PostgresServer = field(init=False)
    dsn: str = field(init=False)
    car_accounts: list[BrokerAccount] = field(init=False, default_factory=list)
    _exit: ExitStack = field(init=False, default_factory=ExitStack)

    def _start(self) -> None:
        self.postgres, self.dsn = start_database(
            self._exit, self.work_dir, timescaledb=None, durable=self.durable
        )
        self.broker = self._exit.enter_context(MosquittoBroker(self.work_dir / "mosquitto"))
        self.car_accounts = self._provision_cars()

    @property
    def timescaledb(self) -> bool:
        return self.postgres.timescaledb_enabled

    def _provision_cars(self) -> list[BrokerAccount]:
        """Create all car accounts with one broker reload (`add_car` reloads once per car)."""
        rng = random.Random(self.seed)
        vins: list[str] = []
        while len(vins) < self.cars:
            vin = random_vin(rng)
            if vin not in vins:
                vins.append(vin)
        passwords = {vin: secrets.token_urlsafe(16) for vin in vins}
        entries = read_password_file(self.broker.password_file)
        entries.update({vin: mosquitto_password_hash(pw) for vin, pw in passwords.items()})
        write_password_file(self.broker.password_file, entries, None)
        # Every car is a dynamic-security client too (its subscribe ACL), as in production.
        self.broker.add_subscribe_acl(*vins[:-1])
        # The last car through the public API: it rewrites the file (keeping ours) and reloads.
        last = vins[-1]
        passwords[last] = self.broker.add_car(last)
        host, port = self.broker.host, self.broker.port
        return [BrokerAccount(vin, passwords[vin], host, port) for vin in vins]

    def add_gateways(self, workers: int) -> GatewayAccounts:
        """Accounts for a gateway of `workers` processes (one shared password)."""
        accounts = GatewayAccounts(GATEWAY_USERNAME, secrets.token_urlsafe(24), workers)
        for username in accounts.usernames:
            self.broker.add_gateway(username, accounts.password)
        return accounts

    def add_subscriber(self, username: str) -> BrokerAccount:
        """A gateway-rights account for the plain counting subscriber."""
        password = self.broker.add_gateway(username)
        return BrokerAccount(username, password, self.broker.host, self.broker.port)
