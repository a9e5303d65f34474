"""Sending commands: claim a car's oldest queued command, sign it, publish it with MQTT 5.

Any gateway instance dispatches: the database decides which one sends a given command (a
per-car advisory lock plus the row lock, see `CommandStore.dispatch`), so two instances never
send the same command and a car never has two in flight. The dispatcher is woken by its own
process (it queued a command for a car, or applied the result or the sweep that freed a car:
no database round trip between the commit and the dispatch, and instances do not all race for
every command) and polls once a second besides, which covers what other instances changed.
Whether a freed car has another command waiting is told by the events every instance announces
(the hub), without a query; only while the hub is not listening is the database asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol
from uuid import UUID

import psycopg
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from psycopg_pool import PoolTimeout

from gateway.commands.errors import SigningKeyError
from gateway.commands.events import CommandEventHub
from gateway.commands.lifecycle import IN_FLIGHT, Status
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandEvent
from gateway.commands.signing import CommandSigner, SigningKey
from gateway.commands.store import (
    ClaimedCommand,
    CommandStore,
    Dispatched,
    DispatchOutcome,
    SignedCommand,
)
from gateway.config import CommandSettings
from schemas import TopicKind, command_topic, vehicle_topic

__all__ = ["CommandDispatcher", "CommandPublisher"]

log = structlog.get_logger(__name__)

_POLL_S = 1.0
_MAX_CARS_PER_ROUND = 500
_CONCURRENCY = 4
_MAX_CARS_PER_CLAIM = 32  # cars dispatched in one transaction (one commit for all of them)
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
        *,
        hub: CommandEventHub | None = None,
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
        self._hub = hub
        if hub is not None:
            hub.add_listener(self._heard)
        # Queued commands per car, as every instance's events tell (through the hub): whether
        # a freed car has one waiting, without asking the database. Valid for one LISTEN
        # session (`_session`); what it misses, the poll finds.
        self._queued: dict[str, set[UUID]] = {}
        self._session = 0

    def on_event(self, event: CommandEvent) -> None:
        """A queued command, or a car leaving flight, may mean work for that car."""
        if event.status is Status.QUEUED:
            self.nudge(event.vin)
        elif event.status not in IN_FLIGHT and event.status is not Status.VERIFIED:
            # Verified follows executed, which freed the car already.
            self.nudge(event.vin, maybe=True)

    def _heard(self, event: CommandEvent) -> None:
        """Every instance's state change (from the hub): keep track of queued commands."""
        self._same_session()
        if event.status is Status.QUEUED:
            self._queued.setdefault(event.vin, set()).add(event.command_id)
            return
        waiting = self._queued.get(event.vin)
        if waiting is not None:
            waiting.discard(event.command_id)
            if not waiting:
                del self._queued[event.vin]

    def _which_waiting(self, vins: set[str]) -> set[str] | None:
        """Which of `vins` have a queued command, as the hub's events tell; None when they
        cannot tell (no hub, or not listening now)."""
        hub = self._hub
        if hub is None or not hub.connected.is_set():
            return None
        self._same_session()
        return {vin for vin in vins if vin in self._queued}

    def _same_session(self) -> None:
        """Forget what an earlier LISTEN session said: events were missed in between."""
        if self._hub is not None and self._session != self._hub.connections:
            self._session = self._hub.connections
            self._queued.clear()

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
                # The cars the events named go first: the poll's query is not on their path.
                self._claim(claims, vins)
                if time.monotonic() - last_poll >= _POLL_S:
                    # Besides the events: cars whose notification was lost, or due a retry.
                    last_poll = time.monotonic()
                    try:
                        polled = await self._store.dispatchable(_MAX_CARS_PER_ROUND)
                    except (psycopg.OperationalError, PoolTimeout) as exc:
                        log.warning("commands.database_unavailable", error=str(exc))
                    else:
                        self._claim(claims, polled)

    def _claim(self, claims: asyncio.TaskGroup, vins: list[str]) -> None:
        """Start dispatching to `vins` (those not being claimed or waiting for a retry)."""
        now = time.monotonic()
        batch: list[str] = []
        unsure: set[str] = set()
        for vin in dict.fromkeys(vins):
            if vin in self._claiming or self._retry_at.get(vin, 0.0) > now:
                continue
            self._retry_at.pop(vin, None)
            self._claiming.add(vin)
            if vin in self._unsure:
                unsure.add(vin)
            self._unsure.discard(vin)
            batch.append(vin)
        for start in range(0, len(batch), _MAX_CARS_PER_CLAIM):
            chunk = batch[start : start + _MAX_CARS_PER_CLAIM]
            claims.create_task(
                self._dispatch(chunk, unsure.intersection(chunk)),
                name=f"dispatch:{chunk[0]}+{len(chunk) - 1}",
            )

    async def _dispatch(self, vins: list[str], unsure: set[str]) -> None:
        """Dispatch to `vins` in one transaction; `unsure` ones only if they have a command
        waiting (they were freed; checked in one statement first)."""
        try:
            async with self._slots:
                wanted = vins
                if unsure:
                    waiting = self._which_waiting(unsure)
                    if waiting is None:
                        waiting = await self._store.queued_among(sorted(unsure))
                    wanted = [vin for vin in vins if vin not in unsure or vin in waiting]
                keys: dict[str, SigningKey] = {}
                for vin in wanted:
                    try:
                        keys[vin] = self._signer.key_for(vin)
                    except SigningKeyError as exc:
                        self._failed(vin, "error", exc)
                if not keys:
                    return

                def sign(claimed: ClaimedCommand) -> SignedCommand:
                    return self._sign(claimed, keys[claimed.vin])

                # The key ids are recorded with `sent`, so the keys are chosen first.
                self._metrics.batch_size.labels("dispatch").observe(len(keys))
                outcomes = await self._store.dispatch(
                    {vin: key.key_id for vin, key in keys.items()}, sign, self._publish
                )
            for vin, dispatched in outcomes.items():
                self._done(vin, dispatched)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            for vin in vins:  # rolled back: still queued
                self._failed(vin, "database_unavailable", exc)
        finally:
            for vin in vins:
                self._claiming.discard(vin)
                if vin in self._again:
                    self._again.discard(vin)
                    self._pending.add(vin)
                    self._wake.set()

    def _done(self, vin: str, dispatched: Dispatched) -> None:
        outcome = dispatched.outcome
        if outcome is DispatchOutcome.ERROR:
            assert dispatched.error is not None
            self._failed(vin, "error", dispatched.error)
            return
        self._metrics.dispatch.labels(outcome.value).inc()
        if outcome is DispatchOutcome.NO_SUBSCRIBER:
            self._retry_at[vin] = time.monotonic() + _RETRY_NO_SUBSCRIBER_S
            log.info("commands.no_subscriber", vin=vin)
        elif outcome is DispatchOutcome.REFUSED:
            log.error("commands.broker_refused", vin=vin)
        for event in dispatched.events:
            log.info(
                "commands.transition",
                command_id=str(event.command_id),
                vin=vin,
                status=event.status.value,
            )
            if event.status not in IN_FLIGHT:  # refused: the next may go
                self.nudge(vin, maybe=True)

    def _failed(self, vin: str, what: str, exc: Exception) -> None:
        """Nothing was sent to `vin` (its command is still queued): try again shortly."""
        self._metrics.dispatch.labels("error").inc()
        self._retry_at[vin] = time.monotonic() + _RETRY_ERROR_S
        if what == "database_unavailable":
            log.warning("commands.database_unavailable", vin=vin, error=str(exc))
        else:
            log.warning("commands.dispatch_failed", vin=vin, error=str(exc))

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
