"""Live command events: one LISTEN connection per gateway, fanned out to the live streams.

Every state change NOTIFYs `tgw_commands` in the transaction that makes it, so whichever gateway
instance made the change, every instance hears it once it is committed. A subscriber that falls
behind is dropped (its stream ends; the client reconnects and reads the history), never allowed
to make the others wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable

import psycopg
import structlog
from pydantic import ValidationError

from gateway.commands.models import CommandEvent
from gateway.commands.store import EVENTS_CHANNEL

__all__ = ["CommandEventHub", "Subscription"]

log = structlog.get_logger(__name__)

_QUEUE_SIZE = 1000
_RETRY_INITIAL_S = 0.5
_RETRY_MAX_S = 10.0


class Subscription:
    """A subscriber's view of the events: iterate it; it ends when the hub closes or drops it."""

    def __init__(self, hub: CommandEventHub, accept: Callable[[CommandEvent], bool]) -> None:
        self._hub = hub
        self.accept = accept
        self.queue: asyncio.Queue[CommandEvent | None] = asyncio.Queue(_QUEUE_SIZE)

    async def next(self, timeout_s: float) -> CommandEvent | None:
        """The next event, or None on timeout. Raises StopAsyncIteration when ended."""
        try:
            # Under load events wait here already: take them without a trip through the event
            # loop each (wait_for runs a task), or a busy stream falls behind by seconds.
            event = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout_s)
            except TimeoutError:
                return None
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_batch(self, timeout_s: float, limit: int) -> list[CommandEvent]:
        """The next event and up to `limit - 1` more already waiting; [] on timeout.

        Raises StopAsyncIteration when ended (after the events before the end were taken).
        A busy stream then writes one chunk for what came together instead of one each.
        """
        first = await self.next(timeout_s)
        if first is None:
            return []
        batch = [first]
        while len(batch) < limit:
            try:
                event = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if event is None:
                self.queue.put_nowait(None)  # the end, for the next call (there is room now)
                break
            batch.append(event)
        return batch

    def close(self) -> None:
        self._hub.unsubscribe(self)


class CommandEventHub:
    """Listens on the database's command channel and hands each event to its subscribers."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[CommandEvent], None]] = []
        self._closed = False
        self.connected = asyncio.Event()
        self.connections = 0  # LISTEN sessions so far: events may have been missed in between

    def add_listener(self, listener: Callable[[CommandEvent], None]) -> None:
        """Call `listener` (on the event loop, must not block) for every event."""
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, accept: Callable[[CommandEvent], bool] = lambda _: True
    ) -> AsyncIterator[Subscription]:
        """Receive the events `accept` selects, from now until the block ends."""
        subscription = Subscription(self, accept)
        if self._closed:
            subscription.queue.put_nowait(None)
        else:
            self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self.unsubscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, event: CommandEvent) -> None:
        """Hand one event to every listener and matching subscriber."""
        for listener in self._listeners:
            listener(event)
        for subscription in list(self._subscriptions):
            if not subscription.accept(event):
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("commands.stream_dropped", reason="subscriber too slow")
                self._end(subscription)

    def close(self) -> None:
        """End every subscription (their streams finish); later subscriptions end at once."""
        self._closed = True
        for subscription in list(self._subscriptions):
            self._end(subscription)

    def _end(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        with contextlib.suppress(asyncio.QueueFull):
            subscription.queue.put_nowait(None)
        if subscription.queue.full():
            # Make room for the end marker: the stream is being cut anyway.
            subscription.queue.get_nowait()
            subscription.queue.put_nowait(None)

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting with backoff when the database goes away."""
        delay = _RETRY_INITIAL_S
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.connections += 1
                    self.connected.set()
                    delay = _RETRY_INITIAL_S
                    log.info("commands.listening", channel=EVENTS_CHANNEL)
                    async for notify in conn.notifies():
                        self._received(notify.payload)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                log.warning("commands.listen_lost", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter
            delay = min(delay * 2, _RETRY_MAX_S)

    def _received(self, payload: str) -> None:
        try:
            event = CommandEvent.model_validate_json(payload)
        except ValidationError:
            # Only our own statements notify this channel; a mismatch is a bug worth seeing.
            log.exception("commands.bad_notification", payload=payload[:200])
            return
        self.publish(event)
