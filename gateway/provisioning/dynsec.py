"""Mosquitto's dynamic-security plugin, driven over `$CONTROL/dynamic-security/v1`.

Why it is there (mosquitto.conf): Mosquitto 2.0's acl_file never refuses a SUBSCRIBE, so a car
could join the gateway's shared subscription and have its round-robin turns of other cars' data
dropped. The plugin refuses such subscriptions. Each car is a client of the plugin WITHOUT a
password (the password file still authenticates it: the plugin defers) holding the role
`tgw-car`, which may subscribe to commands topics only; for publishing and delivery the plugin
defers to the acl_file's per-car patterns.

Commands go out in batches; replies come back on the response topic, matched by correlation data.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from gateway.provisioning.endpoint import BrokerEndpoint, new_client
from gateway.provisioning.errors import BrokerAdminError

__all__ = ["CONTROL_TOPIC", "RESPONSE_TOPIC", "DynsecAdmin", "DynsecReply"]

_log = structlog.get_logger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Commands per control message: ~150 bytes each keeps a batch far below max_packet_size.
_BATCH = 200
_EXISTS = "Client already exists"
_NOT_FOUND = "Client not found"


@dataclass(frozen=True, slots=True)
class DynsecReply:
    """The plugin's answer to one command: `error` is None on success."""

    command: str
    error: str | None
    data: Mapping[str, Any] | None


class DynsecAdmin:
    """A blocking admin connection to the plugin (a context manager; close is idempotent).

    Args:
        endpoint: where the broker listens (plain or TLS).
        username: the admin account (the ACL grants it the control topics only).
        password: its password.
        timeout_s: how long one batch of commands may wait for its replies.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        username: str,
        password: str,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self._endpoint = endpoint
        self._username = username
        self._timeout_s = timeout_s
        self._client = new_client(endpoint, username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._connack: ReasonCode | None = None
        self._suback: list[ReasonCode] = []
        self._replies: dict[str, DynsecReply] = {}
        self._arrived = threading.Condition(self._lock)
        self._open = False

    # -- paho callbacks (its network thread) --------------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self._connack = reason
        self._connected.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[ReasonCode], _p: object
    ) -> None:
        self._suback = list(reasons)
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            document = json.loads(message.payload)
            responses = document["responses"]
        except (ValueError, KeyError, TypeError):
            _log.warning("dynsec.unreadable_response", size=len(message.payload))
            return
        with self._arrived:
            for item in responses if isinstance(responses, list) else ():
                if not isinstance(item, dict):
                    continue
                correlation = item.get("correlationData")
                if isinstance(correlation, str):
                    data = item.get("data")
                    self._replies[correlation] = DynsecReply(
                        str(item.get("command")),
                        item.get("error") if isinstance(item.get("error"), str) else None,
                        data if isinstance(data, dict) else None,
                    )
            self._arrived.notify_all()

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect as the admin and subscribe to the plugin's replies.

        Raises:
            BrokerAdminError: unreachable, refused, or the ACL does not let the admin read replies.
        """
        where = str(self._endpoint)
        try:
            self._client.connect(self._endpoint.host, self._endpoint.port, keepalive=30)
        except OSError as exc:
            raise BrokerAdminError(f"cannot reach the broker at {where}: {exc}") from exc
        self._client.loop_start()
        self._open = True
        if not self._connected.wait(self._timeout_s) or self._connack is None:
            self.close()
            raise BrokerAdminError(f"no answer from the broker at {where}")
        if self._connack.is_failure:
            self.close()
            raise BrokerAdminError(
                f"the broker at {where} refused the admin account {self._username!r} "
                f"({self._connack}): check broker.admin_password and the password file"
            )
        self._client.subscribe(RESPONSE_TOPIC, qos=1)
        if not self._subscribed.wait(self._timeout_s) or any(
            code.is_failure for code in self._suback
        ):
            self.close()
            raise BrokerAdminError(
                f"the broker did not let {self._username!r} read {RESPONSE_TOPIC}: "
                "check the ACL (mosquitto.acl, user tgw-provisioner)"
            )

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._client.disconnect()
        self._client.loop_stop()

    # -- commands -----------------------------------------------------------------------------

    def run(self, commands: Sequence[Mapping[str, Any]]) -> list[DynsecReply]:
        """Send `commands` (in batches) and return the plugin's reply to each, in order.

        Raises:
            BrokerAdminError: a batch was not answered in time (the plugin may have applied
                part of it: every command used here is safe to repeat).
        """
        replies: list[DynsecReply] = []
        for start in range(0, len(commands), _BATCH):
            replies.extend(self._run_batch(commands[start : start + _BATCH]))
        return replies

    def _run_batch(self, commands: Sequence[Mapping[str, Any]]) -> list[DynsecReply]:
        ids = [uuid.uuid4().hex for _ in commands]
        payload = json.dumps(
            {
                "commands": [
                    {**command, "correlationData": cid}
                    for command, cid in zip(commands, ids, strict=True)
                ]
            }
        )
        info = self._client.publish(CONTROL_TOPIC, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerAdminError(f"cannot send to {CONTROL_TOPIC}: {mqtt.error_string(info.rc)}")
        with self._arrived:
            answered = self._arrived.wait_for(
                lambda: all(cid in self._replies for cid in ids), timeout=self._timeout_s
            )
            replies = [self._replies.pop(cid) for cid in ids if cid in self._replies]
        if not answered:
            raise BrokerAdminError(
                f"the dynamic-security plugin answered {len(replies)} of {len(ids)} commands "
                f"within {self._timeout_s:g} s: is it loaded (mosquitto.conf, plugin)? "
                "Repeating the operation is safe"
            )
        return replies

    def add_clients(self, usernames: Iterable[str], role: str) -> None:
        """Make each username a plugin client holding `role` (no password: the file checks it).

        Idempotent: a client that exists already is given the role if it lacks it.
        """
        names = list(usernames)
        create = [
            {"command": "createClient", "username": name, "roles": [{"rolename": role}]}
            for name in names
        ]
        again: list[dict[str, Any]] = []
        failures: list[str] = []
        for name, reply in zip(names, self.run(create), strict=True):
            if reply.error == _EXISTS:
                # addClientRole disconnects the client: only when the role is really missing.
                if role not in (self.client_roles(name) or ()):
                    again.append({"command": "addClientRole", "username": name, "rolename": role})
            elif reply.error:
                failures.append(f"{name}: {reply.error}")
        for item, reply in zip(again, self.run(again), strict=True):
            if reply.error:
                failures.append(f"{item['username']}: {reply.error}")
        if failures:
            raise BrokerAdminError("the dynamic-security plugin refused: " + "; ".join(failures))

    def remove_clients(self, usernames: Iterable[str]) -> None:
        """Delete each username's plugin client (it is disconnected); missing ones are fine."""
        names = list(usernames)
        replies = self.run([{"command": "deleteClient", "username": name} for name in names])
        failures = [
            f"{name}: {reply.error}"
            for name, reply in zip(names, replies, strict=True)
            if reply.error and reply.error != _NOT_FOUND
        ]
        if failures:
            raise BrokerAdminError("the dynamic-security plugin refused: " + "; ".join(failures))

    def client_roles(self, username: str) -> tuple[str, ...] | None:
        """The roles of `username`'s plugin client, or None if it is not a client."""
        (reply,) = self.run([{"command": "getClient", "username": username}])
        if reply.error == _NOT_FOUND:
            return None
        if reply.error or reply.data is None:
            raise BrokerAdminError(f"getClient {username}: {reply.error or 'no data'}")
        client = reply.data.get("client", {})
        roles = client.get("roles", []) if isinstance(client, dict) else []
        return tuple(str(role.get("rolename")) for role in roles if isinstance(role, dict))
