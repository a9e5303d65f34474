"""The private broker of `bench.fleet`: Mosquitto from the repository's configuration, with a
simulated fleet's car accounts provisioned offline.

Mosquitto is `gateway.devstack.MosquittoBroker` (mosquitto.conf with its ACL file and the
dynamic-security plugin). Like `bench._services.FleetServices.add_fleet`, but without a
database: the fleet's VINs follow from `tgw sim fleet --cars N --seed S`, their passwords go to
a credentials file the fleet reads, and their hashes to the broker's password file; every car
is also a dynamic-security client with the car role. Both files are written while the broker
is stopped (the plugin's admin API rewrites its whole file per client: minutes for 20,000).
"""

from __future__ import annotations

import json
import resource
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from device_sim.identity import fleet_vins, read_credentials, write_credentials
from device_sim.settings import FleetSettings
from gateway.devstack import BrokerAccount, MosquittoBroker
from gateway.devstack.mosquitto import (
    CAR_ROLE,
    mosquitto_password_hash,
    read_password_file,
    write_password_file,
)

__all__ = ["MOSQUITTO_OWN_FILES", "FleetBroker", "raise_file_limit"]

MOSQUITTO_OWN_FILES = 6  # listener, epoll, log, stdio: measured on Mosquitto 2.0.11


def raise_file_limit() -> int:
    """Lift this process's open-file limit to the hard one (Mosquitto inherits it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


@dataclass
class FleetBroker:
    """Mosquitto in `work_dir` with the accounts of the fleet (`cars`, `seed`): a sync context
    manager. `credentials` is the file `tgw sim fleet --credentials` reads."""

    work_dir: Path
    cars: int
    seed: int
    broker: MosquittoBroker = field(init=False)
    credentials: Path = field(init=False)
    file_limit: int = field(init=False)
    _exit: ExitStack = field(init=False, default_factory=ExitStack)

    @property
    def client_limit(self) -> int:
        """How many clients this broker can hold at once (one open file each)."""
        return self.file_limit - MOSQUITTO_OWN_FILES

    @property
    def subscriber(self) -> BrokerAccount:
        """An account with the gateway's rights: it may read every car's uplink topics."""
        return self.broker.gateway_account

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
        self.file_limit = raise_file_limit()
        # With 20,000 dynamic-security clients Mosquitto 2.0.11 needs about a minute to load
        # its plugin file before it accepts connections.
        self.broker = self._exit.enter_context(
            MosquittoBroker(self.work_dir / "mosquitto", start_timeout_s=300.0)
        )
        self.credentials = self.work_dir / "cars.csv"
        vins = [vin for vin, _ in fleet_vins(self.cars, self.seed, FleetSettings().profiles)]
        write_credentials(self.credentials, vins, None)
        passwords = read_credentials(self.credentials)
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
