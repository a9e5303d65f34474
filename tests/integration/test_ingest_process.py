"""`tgw gateway run` as a real process: SIGKILL mid-stream loses nothing, SIGTERM flushes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.config import Settings
from gateway.devstack import BrokerAccount, MosquittoBroker
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

CarFactory = Callable[..., BrokerAccount]


def gateway_environment(settings: Settings) -> dict[str, str]:
    mqtt, database, ingest = settings.mqtt, settings.database, settings.ingest
    assert mqtt.password is not None
    return {
        **os.environ,
        "TGW_MQTT__HOST": mqtt.host,
        "TGW_MQTT__PORT": str(mqtt.port),
        "TGW_MQTT__USERNAME": mqtt.username,
        "TGW_MQTT__PASSWORD": mqtt.password.get_secret_value(),
        "TGW_MQTT__CLIENT_ID": mqtt.client_id,
        "TGW_MQTT__SHARE_GROUP": mqtt.share_group,
        "TGW_DATABASE__DSN": database.dsn.get_secret_value(),
        "TGW_HTTP__PORT": str(settings.http.port),
        "TGW_INGEST__BATCH_MAX_DELAY_MS": str(ingest.batch_max_delay_ms),
        "TGW_INGEST__BATCH_MAX_MESSAGES": str(ingest.batch_max_messages),
        "TGW_LOG__LEVEL": "INFO",
    }


@contextmanager
def gateway_process(settings: Settings, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `tgw gateway run` and wait until its health endpoint answers 200."""
    tgw = Path(sys.executable).with_name("tgw")
    with log_file.open("ab") as log:
        process = subprocess.Popen(  # our own entry point
            [str(tgw), "gateway", "run"],
            env=gateway_environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{settings.http.port}/health"
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, log_file.read_text()[-3000:]
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not become healthy"
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT_S)


def publish_stream(car: Car, count: int, start_ts: int, done: threading.Event) -> None:
    try:
        for seq in range(count):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, start_ts + seq))
    finally:
        done.set()


async def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarFactory,
    tmp_path: Path,
) -> None:
    total = 1500
    settings = gateway_settings(mqtt_broker, migrated_database, batch_max_delay_ms=50)
    car = Car(car_credentials())
    published = threading.Event()
    count_ours = "SELECT count(*) FROM telemetry WHERE vin = %s"
    with gateway_process(settings, tmp_path / "gateway.log") as first:
        publisher = threading.Thread(
            target=publish_stream, args=(car, total, now_ms(), published), daemon=True
        )
        publisher.start()
        deadline = time.monotonic() + WAIT_S
        while (await fetch(migrated_database, count_ours, (car.vin,)))[0][0] < 200:
            assert time.monotonic() < deadline, "nothing was stored before the kill"
        first.send_signal(signal.SIGKILL)
        first.wait(WAIT_S)
    stored_at_kill = (await fetch(migrated_database, count_ours, (car.vin,)))[0][0]
    assert stored_at_kill < total, "the stream ended before the kill; make it longer"
    with gateway_process(settings, tmp_path / "gateway.log"):
        assert published.wait(WAIT_S * 2)
        await wait_for_value(migrated_database, count_ours, (car.vin,), total, timeout_s=60)
    car.close()
    rows = await fetch(
        migrated_database,
        "SELECT count(*), count(DISTINCT (boot_id, seq)), min(seq), max(seq) FROM telemetry "
        "WHERE vin = %s",
        (car.vin,),
    )
    assert rows == [(total, total, 0, total - 1)]


async def test_sigterm_commits_what_was_received_before_exiting(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarFactory,
    tmp_path: Path,
) -> None:
    # Batches would wait a minute to fill: only the shutdown flush can commit these.
    settings = gateway_settings(
        mqtt_broker, migrated_database, batch_max_delay_ms=60_000, batch_max_messages=100_000
    )
    car = Car(car_credentials())
    ts = now_ms()
    with gateway_process(settings, tmp_path / "gateway.log") as process:
        for seq in range(20):
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
        url = f"http://127.0.0.1:{settings.http.port}/health"
        deadline = time.monotonic() + WAIT_S
        async with httpx.AsyncClient(timeout=2.0) as http:
            while (await http.get(url)).json()["ingest"]["pending_messages"] < 20:
                assert time.monotonic() < deadline, "the gateway did not receive the messages"
                await asyncio.sleep(0.05)
        assert (
            await fetch(
                migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (car.vin,)
            )
        )[0][0] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    car.close()
    rows = await fetch(
        migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (car.vin,)
    )
    assert rows == [(20,)]
