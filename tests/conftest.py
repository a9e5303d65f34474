"""Session-wide real services for the test suite, and the tier markers.

- `mqtt_broker`: a private Mosquitto rendered from the repository's mosquitto.conf and
  mosquitto.acl (the same security settings as production), with the gateway account.
- `postgres_server`: a private PostgreSQL cluster; TimescaleDB is preloaded in `timescaledb`
  storage mode and absent in `postgres` mode.
- `car_credentials`: makes a car account on the broker (`car_credentials()` or
  `car_credentials(vin)`), returns its `BrokerAccount`.
- `private_broker`: a broker of the test's own, for tests that restart it or need isolation.
- `empty_database_dsn`: a fresh, empty database per test, dropped afterwards.

Storage mode comes from TGW_TEST_STORAGE: `timescaledb` (the default when TimescaleDB is
installed) or `postgres`. Asking for `timescaledb` where it is not installed is an error; in
`postgres` mode tests marked `timescaledb` are skipped.

Sharing the session broker: its username is each client's id (use_username_as_clientid), so two
connections with the same account take each other's session; and a persistent session keeps its
$share subscriptions while offline, receiving its turn of every message. Tests that leave
persistent sessions behind, or restart the broker, should use `private_broker`.

Tests under tests/unit, tests/integration and tests/e2e get their tier's marker automatically.
The services live in pytest's temporary directory and are removed at the end of the session
(set TGW_TEST_KEEP_SERVICES=1 to keep their files and logs for a post-mortem).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from gateway.devstack import (
    BrokerAccount,
    CarCredentialsFactory,
    MosquittoBroker,
    PostgresServer,
    random_vin,
    timescaledb_installed,
)

StorageMode = Literal["timescaledb", "postgres"]
STORAGE_ENV = "TGW_TEST_STORAGE"
KEEP_ENV = "TGW_TEST_KEEP_SERVICES"
TIERS = ("unit", "integration", "e2e")
# Test files whose SQL differs between the storage modes (hypertables or partitions, time_bucket
# or date_bin): `make test` runs these again on plain PostgreSQL (marker `storage`).
STORAGE_TEST_FILES = (
    "test_migrations.py",
    "test_storage_",
    "test_ingest.py",
    "test_ingest_writer.py",
    "test_fleet_api.py",
    "test_insights_",
)

_storage_mode_key = pytest.StashKey[StorageMode]()


def _choose_storage_mode() -> StorageMode:
    requested = os.environ.get(STORAGE_ENV, "").strip().lower()
    installed = timescaledb_installed()
    if requested == "":
        return "timescaledb" if installed else "postgres"
    if requested == "postgres":
        return "postgres"
    if requested == "timescaledb":
        if not installed:
            raise pytest.UsageError(
                f"{STORAGE_ENV}=timescaledb, but TimescaleDB is not installed for PostgreSQL: "
                f"run scripts/build_timescaledb.sh, or set {STORAGE_ENV}=postgres"
            )
        return "timescaledb"
    raise pytest.UsageError(
        f"{STORAGE_ENV}={requested!r} is not a storage mode: use 'timescaledb' or 'postgres'"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_storage_mode_key] = _choose_storage_mode()


def pytest_report_header(config: pytest.Config) -> str:
    return f"tgw storage mode: {config.stash[_storage_mode_key]} ({STORAGE_ENV})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    plain_postgres = config.stash[_storage_mode_key] == "postgres"
    skip_timescaledb = pytest.mark.skip(
        reason=f"needs TimescaleDB; this run uses plain PostgreSQL ({STORAGE_ENV}=postgres)"
    )
    for item in items:
        try:
            tier = item.path.relative_to(tests_dir).parts[0]
        except ValueError:
            tier = ""
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "integration" and item.path.name.startswith(STORAGE_TEST_FILES):
            item.add_marker(pytest.mark.storage)
        if plain_postgres and item.get_closest_marker("timescaledb") is not None:
            item.add_marker(skip_timescaledb)


def _remove(path: Path) -> None:
    if os.environ.get(KEEP_ENV) != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def storage_mode(pytestconfig: pytest.Config) -> StorageMode:
    """`timescaledb` or `postgres`: how this run stores time series (see module docstring)."""
    return pytestconfig.stash[_storage_mode_key]


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory, storage_mode: StorageMode
) -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the session (trust auth on 127.0.0.1, fsync off)."""
    base = tmp_path_factory.mktemp("postgres")
    server = PostgresServer(base / "data", timescaledb=storage_mode == "timescaledb", durable=False)
    with server:
        yield server
    _remove(base)


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A private Mosquitto for the session, with the gateway account (random password)."""
    base = tmp_path_factory.mktemp("mosquitto")
    with MosquittoBroker(base) as broker:
        yield broker
    _remove(base)


@pytest.fixture(scope="session")
def gateway_account(mqtt_broker: MosquittoBroker) -> BrokerAccount:
    """The gateway's broker credentials (reads every car's uplink, sends commands)."""
    return mqtt_broker.gateway_account


@pytest.fixture
def car_credentials(mqtt_broker: MosquittoBroker) -> CarCredentialsFactory:
    """Factory: `car_credentials(vin=None)` creates a car account (a random VIN if none)."""

    def make(vin: str | None = None) -> BrokerAccount:
        vin = vin or random_vin()
        password = mqtt_broker.add_car(vin)
        return BrokerAccount(vin, password, mqtt_broker.host, mqtt_broker.port)

    return make


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of this test's own (same config as `mqtt_broker`): for tests that restart or
    kill it, or must not see other tests' leftover sessions. Starts in well under a second."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def empty_database_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)
