"""`tgw gateway run --workers N`: N processes split the shared subscription; SIGTERM stops all."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr

from gateway.config import Settings
from gateway.devstack import BrokerAccount, MosquittoBroker, free_port, port_is_free
from gateway.workers import worker_settings
from schemas import TopicKind
from tests.integration.ingest_support import (
    WAIT_S,
    Car,
    fetch,
    gateway_settings,
    now_ms,
    telemetry,
    wait_for_value,
)
from tests.integration.test_ingest_process import gateway_environment

CarFactory = Callable[..., BrokerAccount]


def test_worker_identity_derives_from_the_base_settings() -> None:
    base = Settings(
        mqtt={"username": "tgw-gw", "client_id": "tgw-gw", "password": SecretStr("x" * 20)},
        http={"port": 8080},
    )
    second = worker_settings(base, 2)
    assert (second.mqtt.username, second.mqtt.client_id, second.http.port) == (
        "tgw-gw-2",
        "tgw-gw-2",
        8081,
    )
    assert second.mqtt.password == base.mqtt.password


def _consecutive_free_ports(count: int) -> int:
    while True:
        first = free_port()
        if all(port_is_free(first + i) for i in range(count)):
            return first


async def _received(http: httpx.AsyncClient, port: int) -> float:
    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tgw_ingest_messages_received_total{")
    )


@contextmanager
def workers_running(
    workers: int, env: dict[str, str], first_port: int, log_file: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`tgw gateway run --workers N`, once every worker's health endpoint answers."""
    tgw = Path(sys.executable).with_name("tgw")
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(tgw), "gateway", "run", "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        for port in range(first_port, first_port + workers):
            while True:
                assert process.poll() is None, log_file.read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "a worker did not become healthy"
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_two_workers_share_the_load_and_stop_together(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarFactory,
    tmp_path: Path,
) -> None:
    base = f"tgw-w-{uuid.uuid4().hex[:6]}"
    password = mqtt_broker.add_gateway(f"{base}-1")
    mqtt_broker.add_gateway(f"{base}-2", password)
    account = BrokerAccount(base, password, mqtt_broker.host, mqtt_broker.port)
    settings = gateway_settings(mqtt_broker, migrated_database, account=account)
    port = _consecutive_free_ports(2)
    env = gateway_environment(settings) | {"TGW_HTTP__PORT": str(port)}
    count = "SELECT count(*) FROM telemetry WHERE vin = %s"
    car = Car(car_credentials())
    with workers_running(2, env, port, tmp_path / "gateway.log") as process:
        ts = now_ms()
        for seq in range(100):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
        await wait_for_value(migrated_database, count, (car.vin,), 100)
        # Mosquitto hands a shared subscription's messages round-robin to its members.
        async with httpx.AsyncClient(timeout=2.0) as http:
            assert await _received(http, port) > 0
            assert await _received(http, port + 1) > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    car.close()
    assert await fetch(migrated_database, count, (car.vin,)) == [(100,)]
