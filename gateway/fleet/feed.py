"""Live fleet updates: one poller per gateway, fanned out to every console and terminal.

The database is the only place all gateway instances share, so the feed asks it what changed:
every `interval_s`, the cars whose latest state or connectivity moved since the previous poll
(with a margin, since `now()` is a transaction's start time and a batch may commit late), and
every `full_every_s` every car (that also catches flags set without a timestamp, such as stale).
Rows are compared with what was sent before, so subscribers only get real changes.

Each update is encoded once and shared by all subscribers. A subscriber that falls behind is
dropped (its stream ends; the client reconnects and starts from a fresh snapshot), never allowed
to hold the others back. Nobody watching: no polling.

Wire format (server-sent events, docs/api.md):

    event: snapshot   data: {"fields": [...FEED_FIELDS], "rows": [[...], ...], "server_time": ms}
    event: changes    data: {"rows": [[...], ...], "server_time": ms}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import structlog

from gateway.errors import StorageError
from gateway.fleet.alerts import alerts_for
from gateway.fleet.store import FleetStore

__all__ = ["FEED_FIELDS", "FeedSubscription", "FleetFeed", "FleetUpdate", "compact_row"]

log = structlog.get_logger(__name__)

FEED_FIELDS: Final = (
    "vin", "model", "online", "connected", "stale", "last_seen", "time", "lat", "lon",
    "heading", "speed", "fuel", "soc", "odometer", "batt_v", "ignition", "locked",
    "door_fl_open", "door_fr_open", "door_rl_open", "door_rr_open", "trunk_open", "alerts",
)  # fmt: skip
"""Columns of a feed row; `last_seen` and `time` are epoch milliseconds."""

_QUEUE_SIZE = 60
_MARGIN = timedelta(seconds=3)
_RETRY_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class FleetUpdate:
    """One server-sent event, encoded once for every subscriber."""

    kind: Literal["snapshot", "changes"]
    rows: int
    data: bytes

    def sse(self) -> bytes:
        return b"event: " + self.kind.encode() + b"\ndata: " + self.data + b"\n\n"


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def compact_row(row: dict[str, Any]) -> tuple[Any, ...]:
    """A `FleetStore.states_changed_since` row as the feed sends it (see FEED_FIELDS)."""
    return (
        row["vin"],
        row["model"],
        row["online"],
        row["connected"],
        row["stale"],
        _ms(row["last_seen_at"]),
        _ms(row["time"]),
        _r(row["lat"], 6),
        _r(row["lon"], 6),
        _r(row["heading"], 0),
        _r(row["speed"], 1),
        _r(row["fuel"], 1),
        _r(row["soc"], 1),
        _r(row["odometer"], 1),
        _r(row["batt_v"], 2),
        row["ignition"],
        row["locked"],
        row["door_fl_open"],
        row["door_fr_open"],
        row["door_rl_open"],
        row["door_rr_open"],
        row["trunk_open"],
        list(alerts_for(row)),
    )


class FeedSubscription:
    """A subscriber's updates: `await next(timeout)`; StopAsyncIteration once it is ended."""

    def __init__(self, snapshot: FleetUpdate) -> None:
        self.snapshot = snapshot
        self.queue: asyncio.Queue[FleetUpdate | None] = asyncio.Queue(_QUEUE_SIZE)

    async def next(self, timeout_s: float) -> FleetUpdate | None:
        """The next update, or None after `timeout_s` without one."""
        try:
            update = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None
        if update is None:
            raise StopAsyncIteration
        return update


class FleetFeed:
    """Polls the fleet's state while someone watches; hands changes to every subscriber.

    Args:
        store: where the state is read.
        interval_s: seconds between polls for changes.
        full_every_s: seconds between full reads of every car.
    """

    def __init__(
        self, store: FleetStore, *, interval_s: float = 1.0, full_every_s: float = 10.0
    ) -> None:
        self.store = store
        self._interval_s = interval_s
        self._full_every_s = full_every_s
        self._rows: dict[str, tuple[Any, ...]] = {}
        self._since: datetime | None = None
        self._fresh_at = -float("inf")
        self._full_at = -float("inf")
        self._lock = asyncio.Lock()
        self._subscriptions: set[FeedSubscription] = set()
        self._watched = asyncio.Event()
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def run(self) -> None:
        """Poll while anyone watches, until cancelled."""
        delay = self._interval_s
        while True:
            await self._watched.wait()
            try:
                await self.poll()
                delay = self._interval_s
            except StorageError as exc:
                delay = min(delay * 2, _RETRY_MAX_S)
                log.warning("fleet.feed_poll_failed", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)

    async def poll(self) -> FleetUpdate | None:
        """Read what changed, publish it; return the update (None: nothing changed)."""
        async with self._lock:
            now = time.monotonic()
            since = self._since
            full = since is None or now - self._full_at >= self._full_every_s
            if since is not None:
                since = None if full else since - _MARGIN
            rows = await self.store.states_changed_since(since)
            db_now = rows[0]["db_now"] if rows else await self.store.database_now()
            changed: list[tuple[Any, ...]] = []
            for row in rows:
                item = compact_row(row)
                if self._rows.get(item[0]) != item:
                    self._rows[item[0]] = item
                    changed.append(item)
            self._since = db_now
            self._fresh_at = now
            if full:
                self._full_at = now
            if not changed:
                return None
            update = _encode("changes", changed)
            self._publish(update)
            return update

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[FeedSubscription]:
        """A snapshot of every car now, then their changes, until the block ends.

        Raises:
            StorageError: the first read of the fleet failed.
        """
        if time.monotonic() - self._fresh_at > 2 * self._interval_s:
            # Nobody was watching: the rows are old. Catch up before the snapshot.
            await self.poll()
        subscription = FeedSubscription(_encode("snapshot", list(self._rows.values())))
        if self._closed:
            subscription.queue.put_nowait(None)
        else:
            self._subscriptions.add(subscription)
            self._watched.set()
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            if not self._subscriptions:
                self._watched.clear()

    def close(self) -> None:
        """End every stream (so that the HTTP server can stop); later ones end at once."""
        self._closed = True
        for subscription in list(self._subscriptions):
            self._end(subscription)

    def _publish(self, update: FleetUpdate) -> None:
        for subscription in list(self._subscriptions):
            try:
                subscription.queue.put_nowait(update)
            except asyncio.QueueFull:
                log.warning("fleet.stream_dropped", reason="subscriber too slow")
                self._end(subscription)

    def _end(self, subscription: FeedSubscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._watched.clear()
        if subscription.queue.full():
            subscription.queue.get_nowait()  # make room for the end marker: it is cut anyway
        subscription.queue.put_nowait(None)


def _encode(kind: Literal["snapshot", "changes"], rows: list[tuple[Any, ...]]) -> FleetUpdate:
    body: dict[str, Any] = {"rows": rows, "server_time": int(time.time() * 1000)}
    if kind == "snapshot":
        body = {"fields": FEED_FIELDS, **body}
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return FleetUpdate(kind, len(rows), data)
