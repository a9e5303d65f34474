"""The command system of one gateway process, wired for the composition root (gateway/app.py).

    commands = CommandSystem(settings, pool, registry)          # before the broker session
    source = MqttIngestSource(..., routes=commands.routes)       # results share its connection
    commands.start(tasks, broker=source)                         # named tasks in the root group
    ...
    commands.close_streams()                                     # before stopping HTTP

Tasks: `command-events` (LISTEN), `command-create` (new commands, in batches when they queue
up), `command-sweeper` (deadlines, time-outs, verification, also right at start-up for commands
left over by a previous run), `command-results-N` (apply car results), `command-dispatch` (only
with a signing key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import psycopg
import structlog
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.auth import TokenAuthenticator
from gateway.commands.batching import CreateBatcher
from gateway.commands.dispatcher import CommandDispatcher, CommandPublisher
from gateway.commands.events import CommandEventHub
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandEvent
from gateway.commands.results import ResultAcknowledger, ResultIntake
from gateway.commands.service import CommandService
from gateway.commands.signing import CommandSigner, load_signing_key
from gateway.commands.store import CommandStore
from gateway.config import CommandSettings, Settings
from gateway.ingest.inbound import InboundMessage
from schemas import InboundLimits, TopicKind

__all__ = ["CommandBroker", "CommandSystem", "run_sweeper"]

log = structlog.get_logger(__name__)


class CommandBroker(CommandPublisher, ResultAcknowledger, Protocol):
    """The MQTT session the commands share with ingest."""


class CommandSystem:
    """Builds the command system's parts; `start` runs them in the caller's task group."""

    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool[Any], registry: CollectorRegistry
    ) -> None:
        commands = settings.commands
        self.settings = commands
        self.metrics = CommandMetrics(registry)
        self.store = CommandStore(pool)
        self.hub = CommandEventHub(settings.database.dsn.get_secret_value())
        self.signer: CommandSigner | None = None
        if commands.signing_key_file is not None:
            # Fails at start-up, with the file and the fix, rather than at the first command.
            key = load_signing_key(commands.signing_key_file, commands.signing_key_id)
            self.signer = CommandSigner(key, commands.vehicle_keys_dir)
            log.info("commands.signing_key", key_id=key.key_id, fingerprint=key.fingerprint[:16])
        else:
            log.warning(
                "commands.disabled",
                why="no signing key configured (TGW_COMMANDS__SIGNING_KEY_FILE)",
            )
        ingest = settings.ingest
        self.intake = ResultIntake(
            self.store,
            self.metrics,
            workers=commands.result_workers,
            limits=InboundLimits(
                max_payload_bytes=ingest.max_payload_bytes,
                max_future_skew_ms=ingest.max_future_skew_ms,
                max_past_age_ms=ingest.max_past_age_ms,
            ),
            dead_letter_payload_bytes=ingest.dead_letter_payload_bytes,
        )
        self.creator = CreateBatcher(
            self.store,
            busy_policy=commands.busy_policy,
            max_queued=commands.max_queued_per_vehicle,
            metrics=self.metrics,
        )
        self.service = CommandService(
            self.store,
            self.hub,
            commands,
            self.metrics,
            signing_enabled=self.signer is not None,
            creator=self.creator,
        )
        self.authenticator = TokenAuthenticator(pool)

    @property
    def routes(self) -> Mapping[TopicKind, Callable[[InboundMessage], None]]:
        """What the shared MQTT session hands to the command system instead of ingest."""
        return {TopicKind.COMMAND_RESULTS: self.intake.route}

    def start(self, tasks: asyncio.TaskGroup, broker: CommandBroker) -> list[asyncio.Task[None]]:
        """Create the command system's named tasks in `tasks`; return them (for cancelling)."""
        on_event: Callable[[CommandEvent], None] = _ignore
        dispatcher = None
        if self.signer is not None:
            dispatcher = CommandDispatcher(
                self.store, self.signer, broker, self.settings, self.metrics, hub=self.hub
            )
            # What this process changes wakes its dispatcher directly (see dispatcher.py).
            on_event = dispatcher.on_event
            self.service.on_queued = dispatcher.nudge
            self.intake.on_event = on_event
        started = [
            tasks.create_task(self.hub.run(), name="command-events"),
            tasks.create_task(self.creator.run(), name="command-create"),
            tasks.create_task(
                run_sweeper(self.store, self.settings, self.metrics, on_event),
                name="command-sweeper",
            ),
        ]
        started += [
            tasks.create_task(self.intake.run_worker(i, broker), name=f"command-results-{i}")
            for i in range(self.intake.workers)
        ]
        if dispatcher is not None:
            started.append(tasks.create_task(dispatcher.run(), name="command-dispatch"))
        return started

    def close_streams(self) -> None:
        """End every live stream, so that the HTTP server can stop without waiting for them."""
        self.hub.close()


def _ignore(_event: CommandEvent) -> None:
    pass


async def run_sweeper(
    store: CommandStore,
    settings: CommandSettings,
    metrics: CommandMetrics,
    on_event: Callable[[CommandEvent], None] = _ignore,
) -> None:
    """Resolve overdue commands and verify executed ones, now and every `sweep_interval_s`."""
    while True:
        try:
            events = await store.sweep(
                grace_s=settings.expiry_grace_s,
                answer_timeout_s=settings.answer_timeout_s,
                verify_window_s=settings.verify_window_s,
            )
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("commands.sweep_skipped", error=str(exc))
        else:
            for event in events:
                on_event(event)
                metrics.swept.labels(event.status.value).inc()
                log.info(
                    "commands.transition",
                    command_id=str(event.command_id),
                    vin=event.vin,
                    status=event.status.value,
                    reason=event.reason,
                )
        await asyncio.sleep(settings.sweep_interval_s)
