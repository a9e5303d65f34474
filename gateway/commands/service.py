"""What the API asks of the command system: request, read, list, and follow a command live."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from uuid import UUID

from gateway.commands.batching import CreateBatcher
from gateway.commands.errors import CommandRefusedError
from gateway.commands.events import CommandEventHub
from gateway.commands.lifecycle import stream_ends
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import (
    CommandEvent,
    CommandPage,
    CommandRecord,
    NewCommand,
    RateLimits,
)
from gateway.commands.rental import RentalEndReport, check_rental_end
from gateway.commands.store import CommandStore, CreateRequest
from gateway.config import CommandSettings
from schemas import MAX_COMMAND_TTL_MS

__all__ = ["MIN_TTL_S", "CommandService"]

MIN_TTL_S = 2
"""Shorter deadlines cannot survive one broker round trip plus the car's clock skew."""


class CommandService:
    """The command system's use cases, for the HTTP API."""

    def __init__(
        self,
        store: CommandStore,
        hub: CommandEventHub,
        settings: CommandSettings,
        metrics: CommandMetrics,
        *,
        signing_enabled: bool,
        creator: CreateBatcher | None = None,
    ) -> None:
        self._store = store
        self._creator = creator or CreateBatcher(
            store,
            busy_policy=settings.busy_policy,
            max_queued=settings.max_queued_per_vehicle,
        )
        self._hub = hub
        self._settings = settings
        self._metrics = metrics
        self._signing_enabled = signing_enabled
        # Set by the runtime: tells this process's dispatcher a car has a command waiting.
        self.on_queued: Callable[[str], None] = _ignore

    async def request(
        self, new: NewCommand, *, limits: RateLimits | None = None
    ) -> tuple[CommandRecord, bool]:
        """Queue a command (or find the one with the same idempotency key).

        Args:
            new: the request.
            limits: the rate limits to hold it to (checked in the same transaction).

        Returns the command and whether it was created now.

        Raises:
            CommandRefusedError: refused at once, with the HTTP status to answer.
        """
        if not self._signing_enabled:
            raise CommandRefusedError(
                "this gateway cannot send commands: no signing key is configured "
                "(set TGW_COMMANDS__SIGNING_KEY_FILE; see docs/commands.md)",
                status=503,
                kind="commands-disabled",
            )
        ttl_s = new.ttl_s or getattr(self._settings.default_ttl_s, new.action.value)
        max_ttl_s = MAX_COMMAND_TTL_MS // 1000
        if not MIN_TTL_S <= ttl_s <= max_ttl_s:
            raise CommandRefusedError(
                f"ttl_s must be between {MIN_TTL_S} and {max_ttl_s} seconds, not {ttl_s}",
                status=422,
                kind="bad-ttl",
            )
        try:
            # Requests that arrive together are queued in one transaction (batching.py).
            record, created = await self._creator.create(CreateRequest(new, ttl_s, limits))
        except CommandRefusedError as exc:
            self._metrics.refused.labels(exc.kind).inc()
            raise
        if created:
            self._metrics.requested.labels(new.action.value).inc()
            self.on_queued(record.vin)
        return record, created

    async def get(self, command_id: UUID) -> CommandRecord | None:
        return await self._store.get(command_id)

    async def list_for_vehicle(self, vin: str, *, limit: int, cursor: str | None) -> CommandPage:
        if not await self._store.vehicle_exists(vin):
            raise CommandRefusedError(
                f"vehicle {vin} is unknown", status=404, kind="unknown-vehicle"
            )
        return await self._store.list_for_vehicle(vin, limit=limit, cursor=cursor)

    async def rental_end_check(self, vin: str) -> RentalEndReport:
        """Whether a rental of `vin` may end now, naming each condition that fails."""
        known, state = await self._store.latest_state(vin)
        if not known:
            raise CommandRefusedError(
                f"vehicle {vin} is unknown", status=404, kind="unknown-vehicle"
            )
        return check_rental_end(vin, state, self._settings.operating_areas)

    async def follow(
        self, command_id: UUID, *, heartbeat_s: float
    ) -> AsyncIterator[CommandEvent | None]:
        """The command's transitions so far, then live ones until it has nothing more to tell.

        Yields None every `heartbeat_s` without news (the caller sends a keep-alive); each
        heartbeat also re-reads the history, so a notification lost in a database reconnect
        only delays an event.
        """
        async with self._hub.subscribe(lambda e: e.command_id == command_id) as subscription:
            last_id = 0
            while True:
                record = await self._store.get(command_id)
                if record is None:
                    return
                for event in _history(record):
                    if event.transition_id > last_id:
                        last_id = event.transition_id
                        yield event
                if stream_ends(record.status, record.action):
                    return
                while True:
                    try:
                        live = await subscription.next(heartbeat_s)
                    except StopAsyncIteration:
                        return
                    if live is None:
                        yield None
                        break  # re-read the history
                    if live.transition_id <= last_id:
                        continue
                    last_id = live.transition_id
                    yield live
                    if stream_ends(live.status, live.action):
                        return

    async def follow_all(
        self, *, vin: str | None, heartbeat_s: float, batch_limit: int = 256
    ) -> AsyncIterator[list[CommandEvent]]:
        """Every command event from now on (one car's with `vin`), in order.

        Yields what has come together (at most `batch_limit` events), [] as keep-alive.
        """
        async with self._hub.subscribe(lambda e: vin is None or e.vin == vin) as subscription:
            while True:
                try:
                    yield await subscription.next_batch(heartbeat_s, batch_limit)
                except StopAsyncIteration:
                    return


def _ignore(_vin: str) -> None:
    pass


def _history(record: CommandRecord) -> list[CommandEvent]:
    events = []
    for transition in record.transitions or []:
        latest = transition.status is record.status
        detail = transition.detail or {}
        events.append(
            CommandEvent(
                transition_id=transition.id,
                command_id=record.command_id,
                vin=record.vin,
                action=record.action,
                status=transition.status,
                at=transition.at,
                reason=record.reason if latest else detail.get("reason"),
                detail=record.detail if latest else None,
                failed_preconditions=record.failed_preconditions if latest else [],
            )
        )
    return events
