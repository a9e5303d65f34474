"""A small blocking MQTT 5 client for tests: every wait is bounded and answers with the broker's
reason codes, so a test can assert what the broker said (CONNACK, SUBACK, PUBACK).

    with MqttTestClient(account) as car:
        assert car.publish(topic, b"{}").value == 0
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.devstack.accounts import BrokerAccount
from gateway.errors import DevStackError

__all__ = ["MqttTestClient", "ReceivedMessage"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttTestClient:
    """One MQTT 5 connection (paho in a background thread) with bounded, synchronous calls.

    Args:
        account: credentials and address.
        client_id: defaults to the username (the broker replaces it with the username anyway).
        timeout_s: how long each call waits for the broker's answer.
        anonymous: connect without username and password.
        password: use this password instead of the account's (to test a wrong one).
        clean_start: False resumes the session the broker kept for this client id.
        session_expiry_s: how long the broker keeps the session after a disconnect.
    """

    def __init__(
        self,
        account: BrokerAccount,
        *,
        client_id: str | None = None,
        timeout_s: float = 5.0,
        anonymous: bool = False,
        password: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> None:
        self._account = account
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._timeout_s = timeout_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or account.username,
            protocol=mqtt.MQTTv5,
        )
        if not anonymous:
            self._client.username_pw_set(
                account.username, password if password is not None else account.password
            )
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._connack: ReasonCode | None = None
        self._acks: dict[int, threading.Event] = {}
        self._ack_reasons: dict[int, list[ReasonCode]] = {}
        self.messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- paho callbacks (paho's network thread) ---------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self._connack = reason
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, _reason: ReasonCode, _p: object
    ) -> None:
        self._disconnected.set()

    def _answer(self, mid: int, reasons: list[ReasonCode]) -> None:
        with self._lock:
            self._ack_reasons[mid] = reasons
            event = self._acks.setdefault(mid, threading.Event())
        event.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, reasons: list[ReasonCode], _p: object
    ) -> None:
        self._answer(mid, list(reasons))

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        self._answer(mid, [reason])

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(ReceivedMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    # -- lifecycle --------------------------------------------------------------------------

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK reason code (success or refusal)."""
        # paho's Properties has no annotations; packet type 1 is CONNECT.
        props = Properties(packetType=1)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect(
            self._account.host, self._account.port, keepalive=30,
            clean_start=self._clean_start, properties=props,
        )  # fmt: skip
        self._client.loop_start()
        if not self._connected.wait(self._timeout_s) or self._connack is None:
            self.close()
            raise DevStackError(f"no CONNACK from {self._account.host}:{self._account.port}")
        return self._connack

    def close(self) -> None:
        """Disconnect and stop the network thread; idempotent."""
        self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        reason = self.connect()
        if reason.is_failure:
            self.close()
            raise DevStackError(f"{self._account.username} was refused: {reason}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def disconnected(self) -> bool:
        """Whether the broker (or we) closed this connection."""
        return self._disconnected.is_set()

    # -- operations -------------------------------------------------------------------------

    def _wait_answer(self, mid: int, what: str) -> list[ReasonCode]:
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        if not event.wait(self._timeout_s):
            raise DevStackError(f"no answer from the broker to {what} within {self._timeout_s} s")
        with self._lock:
            del self._acks[mid]
            return self._ack_reasons.pop(mid)

    def subscribe(self, *filters: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason code of each filter."""
        result, mid = self._client.subscribe([(f, qos) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise DevStackError(f"subscribe failed locally: {mqtt.error_string(result)}")
        return self._wait_answer(mid, f"SUBSCRIBE {filters}")

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish with QoS 1 and return the PUBACK reason code (QoS 0: success once sent)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DevStackError(f"publish failed locally: {mqtt.error_string(info.rc)}")
        return self._wait_answer(info.mid, f"PUBLISH {topic}")[0]

    def next_message(self, timeout_s: float | None = None) -> ReceivedMessage:
        """The next received message, or DevStackError if none arrives in time."""
        try:
            return self.messages.get(timeout=self._timeout_s if timeout_s is None else timeout_s)
        except queue.Empty:
            raise DevStackError("no message arrived in time") from None

    def messages_until(
        self, payload: bytes, timeout_s: float | None = None
    ) -> list[ReceivedMessage]:
        """Every message received up to and including the first one carrying `payload`.

        Use a marker ("barrier") message published after the one under test: the broker keeps
        order, so anything that leaked would come before the barrier. No fixed waits.
        """
        seen: list[ReceivedMessage] = []
        while True:
            message = self.next_message(timeout_s)
            seen.append(message)
            if message.payload == payload:
                return seen
