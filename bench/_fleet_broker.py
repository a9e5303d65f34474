"""The private broker of `bench.fleet`: Mosquitto from the repository's configuration, with a
simulated fleet's car accounts provisioned offline.

Mosquitto is `gateway.devstack.MosquittoBroker` (mosquitto.conf with its ACL file and the
dynamic-security plugin). The accounts are made as `bench._services.FleetServices.add_fleet`
makes them (`bench._lifetime.enrol_fleet`), without a database.
"""

from __future__ import annotations

import resource
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench._lifetime import StartedInOrder, enrol_fleet
from gateway.devstack import BrokerAccount, MosquittoBroker

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
class FleetBroker(StartedInOrder):
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

    def _start(self) -> None:
        self.file_limit = raise_file_limit()
        # With 20,000 dynamic-security clients Mosquitto 2.0.11 needs about a minute to load
        # its plugin file before it accepts connections.
        self.broker = self._exit.enter_context(
            MosquittoBroker(self.work_dir / "mosquitto", start_timeout_s=300.0)
        )
        self.credentials = self.work_dir / "cars.csv"
        enrol_fleet(self.broker, self.credentials, self.cars, self.seed)
