"""Helpers for command tests: a gateway with a signing key, a simulated car that answers, tokens.

`CarResponder` is a car reduced to its command handling: a real MQTT 5 client with the car's own
broker account, a persistent session subscribed to its commands topic, an Ed25519 check of every
command against the public key it trusts, and answers scripted by the test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.auth import Role, TokenStore
from gateway.commands.signing import KeyPairFiles, create_key_pair, load_public_key
from gateway.config import CommandSettings, Settings
from gateway.devstack import BrokerAccount, MosquittoBroker
from schemas import CommandMessage, TopicKind, command_topic, vehicle_topic
from tests.integration.ingest_support import WAIT_S, gateway_settings, now_ms

ALL_ACTIONS = (
    "lock",
    "unlock",
    "unlock_and_enable_driving",
    "lock_and_disable_driving",
    "request_state",
)


def make_keys(directory: Path, key_id: str = "test-key") -> KeyPairFiles:
    return create_key_pair(directory, key_id)


def command_gateway_settings(
    broker: MosquittoBroker, dsn: str, keys: KeyPairFiles | None, **commands: Any
) -> Settings:
    """A test gateway (own account, free HTTP port) with commands signed by `keys`."""
    settings = gateway_settings(broker, dsn)
    section = CommandSettings(
        signing_key_file=keys.private_path if keys else None,
        signing_key_id=keys.key_id if keys else None,
        sweep_interval_s=0.2,
        **commands,
    )
    return settings.model_copy(update={"commands": section})


def api(settings: Settings, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.http.port}", headers=headers, timeout=10.0
    )


async def make_token(dsn: str, name: str, role: Role) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        _, secret = await TokenStore(conn).create(name, role, created_by="test")
        return secret


@dataclass
class Reply:
    """One answer the car sends, after `delay_s` (from the command's arrival)."""

    outcome: str
    reason: str | None = None
    failed_preconditions: Sequence[str] = ()
    detail: str | None = None
    state: dict[str, Any] | None = None
    delay_s: float = 0.0


Behaviour = Callable[[CommandMessage], list[Reply]]


def executes(state: dict[str, Any] | None = None) -> Behaviour:
    """Accept, then execute at once."""

    def plan(command: CommandMessage) -> list[Reply]:
        locked = {"lock": True, "lock_and_disable_driving": True}.get(command.action.value, False)
        read_back = state if state is not None else {"locked": locked}
        return [Reply("accepted"), Reply("executed", state=read_back)]

    return plan


def rejects(reason: str, *preconditions: str) -> Behaviour:
    return lambda _: [Reply("rejected", reason, preconditions)]


def accepts_only() -> Behaviour:
    return lambda _: [Reply("accepted")]


def silent() -> Behaviour:
    return lambda _: []


@dataclass
class ReceivedCommand:
    command: CommandMessage | None
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    expiry_s: int | None
    signature_ok: bool
    received_at_ms: int


@dataclass
class CarResponder:
    """A car's MQTT 5 session answering commands (see module docstring)."""

    account: BrokerAccount
    trusted: Ed25519PublicKey
    behaviour: Behaviour = field(default_factory=executes)
    capabilities: Sequence[str] = ALL_ACTIONS
    received: list[ReceivedCommand] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vin = self.account.username
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._client: mqtt.Client | None = None

    # -- connection -------------------------------------------------------------------------

    def connect(self, *, clean_start: bool = False) -> None:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.vin,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(self.account.username, self.account.password)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        self._connected.clear()
        self._subscribed.clear()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no hints
        properties.SessionExpiryInterval = 3600
        client.connect(
            self.account.host, self.account.port, clean_start=clean_start, properties=properties
        )
        client.loop_start()
        self._client = client
        if not self._connected.wait(WAIT_S) or not self._subscribed.wait(WAIT_S):
            raise AssertionError(f"car {self.vin} could not connect and subscribe")

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(command_topic(self.vin), qos=1)
        self._connected.set()

    # -- what a car publishes -------------------------------------------------------------------

    def publish(self, kind: TopicKind, document: dict[str, Any], *, retain: bool = False) -> None:
        self.publish_raw(
            vehicle_topic(self.vin, kind), json.dumps(document).encode(), retain=retain
        )

    def publish_raw(
        self, topic: str, payload: bytes, *, retain: bool = False, correlation: bytes | None = None
    ) -> None:
        assert self._client is not None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho ships no hints
        if correlation is not None:
            properties.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(WAIT_S)

    def birth(self) -> None:
        self.publish(
            TopicKind.STATUS,
            {
                "v": 1,
                "vin": self.vin,
                "online": True,
                "reason": "connected",
                "ts": now_ms(),
                "boot_id": "boot-1",
                "capabilities": list(self.capabilities),
            },
            retain=True,
        )

    def telemetry(self, seq: int, **signals: Any) -> None:
        self.publish(
            TopicKind.TELEMETRY,
            {
                "v": 1,
                "vin": self.vin,
                "boot_id": "boot-1",
                "samples": [{"seq": seq, "ts": now_ms(), "signals": signals}],
            },
        )

    def result(self, command_id: uuid.UUID | str, reply: Reply, *, vin: str | None = None) -> None:
        document: dict[str, Any] = {
            "v": 1,
            "command_id": str(command_id),
            "vin": vin or self.vin,
            "ts": now_ms(),
            "outcome": reply.outcome,
        }
        if reply.reason is not None:
            document["reason"] = reply.reason
        if reply.failed_preconditions:
            document["failed_preconditions"] = list(reply.failed_preconditions)
        if reply.detail is not None:
            document["detail"] = reply.detail
        if reply.state is not None:
            document["state"] = reply.state
        self.publish_raw(
            vehicle_topic(self.vin, TopicKind.COMMAND_RESULTS),
            json.dumps(document).encode(),
            correlation=uuid.UUID(str(command_id)).bytes,
        )

    # -- commands ---------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        payload = bytes(message.payload)
        try:
            command: CommandMessage | None = CommandMessage.model_validate_json(payload)
        except ValueError:
            command = None
        signature_ok = False
        if command is not None:
            try:
                import base64  # noqa: PLC0415

                self.trusted.verify(base64.b64decode(command.signature), command.signing_bytes())
                signature_ok = True
            except InvalidSignature:
                signature_ok = False
        self.received.append(
            ReceivedCommand(
                command=command,
                payload=payload,
                response_topic=getattr(props, "ResponseTopic", None),
                correlation=getattr(props, "CorrelationData", None),
                expiry_s=getattr(props, "MessageExpiryInterval", None),
                signature_ok=signature_ok,
                received_at_ms=now_ms(),
            )
        )
        if command is None:
            return
        if not signature_ok:
            replies = [Reply("rejected", "bad_signature")]
        elif command.expires_at <= now_ms():
            replies = [Reply("rejected", "expired")]
        else:
            replies = self.behaviour(command)
        # Not from this (paho's network) thread: waiting for PUBACK here would block it.
        worker = threading.Thread(
            target=self._answer, args=(command.command_id, replies, time.monotonic()), daemon=True
        )
        worker.start()

    def _answer(self, command_id: uuid.UUID, replies: list[Reply], arrived: float) -> None:
        for reply in replies:
            pause = arrived + reply.delay_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self._client is None:
                return
            self.result(command_id, reply)


@asynccontextmanager
async def responding_car(
    account: BrokerAccount, keys: KeyPairFiles, behaviour: Behaviour | None = None, **kwargs: Any
) -> AsyncIterator[CarResponder]:
    car = CarResponder(account, load_public_key(keys.public_path), **kwargs)
    if behaviour is not None:
        car.behaviour = behaviour
    await asyncio.to_thread(car.connect)
    try:
        yield car
    finally:
        await asyncio.to_thread(car.disconnect)


@asynccontextmanager
async def registered_car(
    account: BrokerAccount,
    keys: KeyPairFiles,
    behaviour: Behaviour | None = None,
    *,
    dsn: str,
    **kwargs: Any,
) -> AsyncIterator[CarResponder]:
    """A responding car that has said its birth and that the running gateway has registered."""
    async with responding_car(account, keys, behaviour, **kwargs) as car:
        await asyncio.to_thread(car.birth)
        await wait_registered(dsn, car.vin)
        yield car


async def wait_registered(dsn: str, vin: str) -> None:
    """Until the gateway stored the car's capabilities from its birth message."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT capabilities FROM vehicles WHERE vin = %s", (vin,))
            row = await cur.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{vin} was not registered with capabilities in time")


async def wait_status(
    client: httpx.AsyncClient, command_id: str, statuses: set[str], timeout_s: float = WAIT_S
) -> dict[str, Any]:
    """Poll the API until the command is in one of `statuses`; return it."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = await client.get(f"/v1/commands/{command_id}")
        except httpx.ConnectError:  # the gateway's HTTP server is still starting
            await asyncio.sleep(0.05)
            continue
        assert response.status_code == 200, response.text
        record = response.json()
        if record["status"] in statuses:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"command {command_id} is {record.get('status')}, expected {statuses}")
