"""Private development services: a Mosquitto broker and a PostgreSQL/TimescaleDB cluster.

Used by the test fixtures (tests/conftest.py) and `tgw dev up`. Both render production-shaped
configuration (the repository's mosquitto.conf and mosquitto.acl) on loopback ports in a
directory of their own, and never touch the machine's own services.

    with MosquittoBroker(tmp / "mqtt") as broker, PostgresServer(tmp / "pg") as pg:
        password = broker.add_car("WVWZZZ1JZXW000001")
        dsn = pg.create_database("tgw")
"""

from gateway.devstack._host import free_port, port_is_free
from gateway.devstack.accounts import BrokerAccount, CarCredentialsFactory, random_vin
from gateway.devstack.mosquitto import (
    DEFAULT_GATEWAY_USERNAME,
    MosquittoBroker,
    connack_reason,
    mosquitto_password_hash,
)
from gateway.devstack.postgres import PostgresServer, pg_bindir, timescaledb_installed
from gateway.devstack.testclient import MqttTestClient, ReceivedMessage

__all__ = [
    "DEFAULT_GATEWAY_USERNAME",
    "BrokerAccount",
    "CarCredentialsFactory",
    "MosquittoBroker",
    "MqttTestClient",
    "PostgresServer",
    "ReceivedMessage",
    "connack_reason",
    "free_port",
    "mosquitto_password_hash",
    "pg_bindir",
    "port_is_free",
    "random_vin",
    "timescaledb_installed",
]
