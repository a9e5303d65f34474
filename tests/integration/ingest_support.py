"""Helpers for ingest tests: a gateway in this event loop, cars as real MQTT clients."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from gateway.app import run_gateway
from gateway.config import DatabaseSettings, HttpSettings, IngestSettings, MqttSettings, Settings
from gateway.devstack import BrokerAccount, MosquittoBroker, free_port
from schemas import TopicKind, vehicle_topic

WAIT_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def gateway_account(broker: MosquittoBroker) -> BrokerAccount:
    """A fresh gateway account: the broker pins each client id to its username
    (use_username_as_clientid), so every gateway instance has an account of its own."""
    username = f"tgw-gateway-{uuid.uuid4().hex[:8]}"
    return BrokerAccount(username, broker.add_gateway(username), broker.host, broker.port)


def gateway_settings(
    broker: MosquittoBroker,
    dsn: str,
    *,
    account: BrokerAccount | None = None,
    share_group: str | None = None,
    **ingest: Any,
) -> Settings:
    """Settings for one test's gateway: its own account and share group, a free HTTP port."""
    account = account or gateway_account(broker)
    return Settings(
        mqtt=MqttSettings(
            host=account.host,
            port=account.port,
            username=account.username,
            password=SecretStr(account.password),
            client_id=account.username,
            share_group=share_group or f"group-{account.username}",
        ),
        database=DatabaseSettings(dsn=SecretStr(dsn), pool_min_size=1, pool_max_size=4),
        ingest=IngestSettings(**ingest),
        http=HttpSettings(port=free_port()),
    )


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """Run the gateway in this event loop until the block ends, then shut it down gracefully."""
    ready, shutdown = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_gateway(settings, ready=ready, shutdown=shutdown))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises the gateway's start-up error
    assert ready.is_set(), "the gateway did not start in time"
    try:
        yield task
    finally:
        shutdown.set()
        await asyncio.wait_for(task, WAIT_S)


class Car:
    """A car's MQTT 5 connection with its own credentials (username = client id = VIN)."""

    def __init__(self, account: BrokerAccount, *, will: dict[str, Any] | None = None) -> None:
        self.vin = account.username
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.vin,
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(account.username, account.password)
        if will is not None:
            self._client.will_set(
                vehicle_topic(self.vin, TopicKind.STATUS), json.dumps(will), qos=1, retain=True
            )
        connected = threading.Event()
        self._client.on_connect = lambda *args: connected.set()
        self._client.connect(account.host, account.port)
        self._client.loop_start()
        if not connected.wait(WAIT_S):
            raise AssertionError(f"car {self.vin} could not connect")

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish(self, kind: TopicKind, document: dict[str, Any], *, retain: bool = False) -> None:
        self.publish_raw(
            vehicle_topic(self.vin, kind), json.dumps(document).encode(), retain=retain
        )

    def drop_connection(self) -> None:
        """Disconnect so that the broker publishes the last will (MQTT 5 reason code 4)."""
        self._client.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        )
        self._client.loop_stop()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def telemetry(
    vin: str, seq: int, ts: int, boot_id: str = "boot-1", **signals: Any
) -> dict[str, Any]:
    return {
        "v": 1,
        "vin": vin,
        "boot_id": boot_id,
        "samples": [{"seq": seq, "ts": ts, "signals": signals or {"speed": 10.0}}],
    }


async def fetch(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(query.encode(), params)
        return await cursor.fetchall()


async def wait_for_value(
    dsn: str, query: str, params: tuple[Any, ...], expected: Any, timeout_s: float = WAIT_S
) -> Any:
    """Poll a query until it returns `expected` (first column of the first row)."""
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while time.monotonic() < deadline:
        try:
            rows = await fetch(dsn, query, params)
            value = rows[0][0] if rows else None
        except psycopg.OperationalError:
            value = None
        if value == expected:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{query} {params} gave {value!r}, expected {expected!r}")
