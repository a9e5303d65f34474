"""Sending commands: claim a car's oldest queued command, sign it, publish it with MQTT 5.

Any gateway instance dispatches: the database decides which one sends a given command (a
per-car advisory lock plus the row lock, see `CommandStore.dispatch`), so two instances never
send the same command and a car never has two in flight. The dispatcher is woken by its own
process (it queued a command for a car, or applied the result or the sweep that freed a car:
no database round trip between the commit and the dispatch, and instances do not all race for
every command) and polls once a second besides, which covers what other instances changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import psycopg
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from psycopg_pool import PoolTimeout

from gateway.commands.errors import SigningKeyError
from gateway.commands.lifecycle import IN_FLIGHT, Status
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandEvent
from gateway.commands.signing import CommandSigner, SigningKey
from gateway.commands.store import ClaimedCommand, CommandStore, DispatchOutcome, SignedCommand
from gateway.config import CommandSettings
from gateway.errors import BrokerError
from schemas import TopicKind, command_topic, vehicle_topic

__all__ = ["CommandDispatcher", "CommandPublisher"]

log = structlog.get_logger(__name__)

_POLL_S = 1.0
_MAX_CARS_PER_ROUND = 500
_CONCURRENCY = 4
_RETRY_NO_SUBSCRIBER_S = 1.0
_RETRY_ERROR_S = 2.0


class CommandPublisher(Protocol):
    """The broker side: publish QoS 1 and return the PUBACK reason code."""

    async def publish(
        self, topic: str, payload: bytes, properties: Properties, *, timeout_s: float
    ) -> ReasonCode: ...


class CommandDispatcher:
    """Runs until cancelled: sends every queued command whose car is free, oldest first."""

    def __init__(
        self,
        store: CommandStore,
        signer: CommandSigner,
        publisher: CommandPublisher,
        settings: CommandSettings,
        metrics: CommandMetrics,
    ) -> None:
        self._store = store
        self._signer = signer
        self._publisher = publisher
        self._settings = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._pending: set[str] = set()  # cars an event says may have work
        self._unsure: set[str] = set()  # ... of which only because they became free
        self._again: set[str] = set()  # cars with news while a claim for them was running
        self._claiming: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._slots = asyncio.Semaphore(_CONCURRENCY)

    def on_event(self, event: CommandEvent) -> None:
        """A queued command, or a car leaving flight, may mean work for that car."""
        if event.status is Status.QUEUED:
            self.nudge(event.vin)
        elif event.status not in IN_FLIGHT and event.status is not Status.VERIFIED:
            # Verified follows executed, which freed the car already.
            self.nudge(event.vin, maybe=True)

    def nudge(self, vin: str, *, maybe: bool = False) -> None:
        """Look at `vin` now: this process queued a command for it, or (`maybe`) saw it become
        free, when it may or may not have another command waiting (checked first, cheaply)."""
        if not maybe:
            self._unsure.discard(vin)
        elif vin not in self._pending and vin not in self._again:
            self._unsure.add(vin)
        if vin in self._claiming:
            self._again.add(vin)
        else:
            self._pending.add(vin)
        self._wake.set()

    async def run(self) -> None:
        last_poll = 0.0
        async with asyncio.TaskGroup() as claims:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL_S)
                self._wake.clear()
                vins = list(self._pending)
                self._pending.clear()
                if time.monotonic() - last_poll >= _POLL_S:
                    # Besides the events: cars whose notification was lost, or due a retry.
                    last_poll = time.monotonic()
                    try:
                        vins += await self._store.dispatchable(_MAX_CARS_PER_ROUND)
                    except (psycopg.OperationalError, PoolTimeout) as exc:
                        log.warning("commands.database_unavailable", error=str(exc))
                now = time.monotonic()
                for vin in dict.fromkeys(vins):
                    if vin in self._claiming or self._retry_at.get(vin, 0.0) > now:
                        continue
                    self._retry_at.pop(vin, None)
                    self._claiming.add(vin)
                    check = vin in self._unsure
                    self._unsure.discard(vin)
                    claims.create_task(self._dispatch(vin, check), name=f"dispatch:{vin}")

    async def _dispatch(self, vin: str, check: bool = False) -> None:
        try:
            async with self._slots:
                events: list[CommandEvent] = []
                if check and not await self._store.has_queued(vin):
                    outcome = DispatchOutcome.NOTHING
                else:
                    # The key is chosen first: its id is recorded with `sent`, in the claim.
                    key = self._signer.key_for(vin)

                    def sign(claimed: ClaimedCommand) -> SignedCommand:
                        return self._sign(claimed, key)

                    outcome, events = await self._store.dispatch(
                        vin, key.key_id, sign, self._publish
                    )
            self._metrics.dispatch.labels(outcome.value).inc()
            if outcome is DispatchOutcome.NO_SUBSCRIBER:
                self._retry_at[vin] = time.monotonic() + _RETRY_NO_SUBSCRIBER_S
                log.info("commands.no_subscriber", vin=vin)
            elif outcome is DispatchOutcome.REFUSED:
                log.error("commands.broker_refused", vin=vin)
            for event in events:
                log.info(
                    "commands.transition",
                    command_id=str(event.command_id),
                    vin=vin,
                    status=event.status.value,
                )
                if event.status not in IN_FLIGHT:  # expired or refused: the next may go
                    self.nudge(vin, maybe=True)
        except (BrokerError, SigningKeyError) as exc:
            # The transaction rolled back: the command is still queued; try again shortly.
            self._metrics.dispatch.labels("error").inc()
            self._retry_at[vin] = time.monotonic() + _RETRY_ERROR_S
            log.warning("commands.dispatch_failed", vin=vin, error=str(exc))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._metrics.dispatch.labels("error").inc()
            self._retry_at[vin] = time.monotonic() + _RETRY_ERROR_S
            log.warning("commands.database_unavailable", vin=vin, error=str(exc))
        finally:
            self._claiming.discard(vin)
            if vin in self._again:
                self._again.discard(vin)
                self._pending.add(vin)
                self._wake.set()

    def _sign(self, claimed: ClaimedCommand, key: SigningKey) -> SignedCommand:
        message = self._signer.sign(
            command_id=claimed.command_id,
            vin=claimed.vin,
            action=claimed.action,
            issued_at_ms=claimed.issued_at_ms,
            expires_at_ms=claimed.expires_at_ms,
            nonce=claimed.nonce,
            key=key,
        )
        return SignedCommand(message.model_dump_json().encode(), message.key_id)

    async def _publish(self, claimed: ClaimedCommand, signed: SignedCommand) -> int:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho ships no hints here
        properties.ResponseTopic = vehicle_topic(claimed.vin, TopicKind.COMMAND_RESULTS)
        properties.CorrelationData = claimed.command_id.bytes
        # Rounded down, so the broker drops the command before its deadline, never after (it
        # had at least a second left when claimed; a few ms later it may be just under).
        properties.MessageExpiryInterval = max(1, int(claimed.seconds_left_now()))
        started = time.perf_counter()
        reason: Any = await self._publisher.publish(
            command_topic(claimed.vin),
            signed.payload,
            properties,
            timeout_s=self._settings.publish_timeout_s,
        )
        self._metrics.publish_seconds.observe(time.perf_counter() - started)
        return int(reason.value)
