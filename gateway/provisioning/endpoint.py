"""Where and how a tool connects to the broker (plain or TLS), and a one-shot CONNACK probe."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSettings
from gateway.provisioning.errors import BrokerAdminError

__all__ = ["BrokerEndpoint", "connack", "new_client"]


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """A broker address; TLS (verifying the broker against `tls_ca_file`) when that is set."""

    host: str
    port: int
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_settings(cls, mqtt_settings: MqttSettings) -> BrokerEndpoint:
        """Where the gateway connects (the provisioning tool connects there too)."""
        return cls(
            mqtt_settings.host,
            mqtt_settings.port,
            mqtt_settings.tls_ca_file,
            mqtt_settings.tls_cert_file,
            mqtt_settings.tls_key_file,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The client's TLS context (host name checked), or None for plain MQTT."""
        if self.tls_ca_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca_file))
            if self.tls_cert_file is not None:
                key = str(self.tls_key_file) if self.tls_key_file else None
                context.load_cert_chain(str(self.tls_cert_file), key)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerAdminError(f"cannot load the TLS files for {self}: {exc}") from exc
        return context

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls_ca_file else 'mqtt'}://{self.host}:{self.port}"


def new_client(endpoint: BrokerEndpoint, username: str, password: str | None) -> mqtt.Client:
    """An MQTT 5 paho client for `username` (client id = username, as the broker enforces)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    context = endpoint.tls_context()
    if context is not None:
        client.tls_set_context(context)
    return client


def connack(
    endpoint: BrokerEndpoint, username: str, password: str, *, timeout_s: float = 2.0
) -> ReasonCode | None:
    """Connect once (clean session, expires at once) and return the CONNACK, or None if none.

    Never probe with an account a car or gateway is using: the broker makes the username the
    client id, so the probe would take that connection's place.
    """
    client = new_client(endpoint, username, password)
    answers: list[ReasonCode] = []

    def on_connect(
        _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        answers.append(reason)

    client.on_connect = on_connect
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=10)
    except (OSError, ssl.SSLError):
        return None
    try:
        deadline = time.monotonic() + timeout_s
        while not answers and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
    finally:
        client.disconnect()
        client.loop(timeout=0.01)
        sock = client.socket()
        if sock is not None:
            sock.close()
    return answers[0] if answers else None
