"""Group commit for new commands: requests that arrive together are queued in one transaction.

A booking backend sends many commands at once. Each in its own transaction costs a commit (a
WAL flush) and five statements, each a few hundred microseconds of the gateway's CPU.
`CreateBatcher` hands whatever is waiting when a transaction can start to
`CommandStore.create_many`: one commit and the same five statements for the whole batch. A
request that finds nothing else waiting goes at once (no timer), so one command alone is as
fast as before; batches only form when requests queue up anyway.

A batch holds one request per car and per idempotency key (the store's rule); a request for
a car in a batch being created waits for the next one, so each car's requests keep their
order.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog

from gateway.commands.errors import CommandRefusedError
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandRecord
from gateway.commands.store import CommandStore, CreateRequest

__all__ = ["CreateBatcher"]

log = structlog.get_logger(__name__)

_MAX_BATCH = 128
_CONCURRENCY = 2  # batches in flight: one commits while the next gathers its requests

Created = tuple[CommandRecord, bool]


class CreateBatcher:
    """Queues new commands in batches while `run` runs (directly, one by one, otherwise)."""

    def __init__(
        self,
        store: CommandStore,
        *,
        busy_policy: str,
        max_queued: int,
        metrics: CommandMetrics | None = None,
        max_batch: int = _MAX_BATCH,
        concurrency: int = _CONCURRENCY,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._busy_policy = busy_policy
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._waiting: deque[tuple[CreateRequest, asyncio.Future[Created]]] = deque()
        self._wake = asyncio.Event()
        self._running = False
        self._cars_in_flight: set[str] = set()  # in a batch being created now

    async def create(self, item: CreateRequest) -> Created:
        """Queue `item` (see `CommandStore.create`); raises `CommandRefusedError` when refused."""
        if not self._running:  # starting or stopping: on its own
            return await self._store.create(
                item.request,
                ttl_s=item.ttl_s,
                busy_policy=self._busy_policy,
                max_queued=self._max_queued,
                limits=item.limits,
            )
        future: asyncio.Future[Created] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Take batches until cancelled; requests still waiting then are refused (503)."""
        self._running = True
        try:
            async with asyncio.TaskGroup() as workers:
                for i in range(self._concurrency):
                    workers.create_task(self._work(), name=f"command-create-{i}")
        finally:
            self._running = False
            stopping = _stopping()
            while self._waiting:
                _, future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(stopping)

    async def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:  # nothing waiting, or only for cars in the other batch
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._create(batch)
            finally:
                self._cars_in_flight.difference_update(item.request.vin for item, _ in batch)
                if self._waiting:
                    self._wake.set()

    async def _create(self, batch: list[tuple[CreateRequest, asyncio.Future[Created]]]) -> None:
        if self._metrics is not None:
            self._metrics.batch_size.labels("create").observe(len(batch))
        try:
            outcomes = await self._store.create_many(
                [item for item, _ in batch],
                busy_policy=self._busy_policy,
                max_queued=self._max_queued,
            )
        except BaseException as exc:
            # The database is unavailable (or the gateway is stopping): nothing of the batch
            # was committed, or it was and a retry finds it by its key. Each request gets the
            # error, as it would have alone.
            error = exc if isinstance(exc, Exception) else _stopping()
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            log.warning("commands.create_failed", requests=len(batch), error=str(exc))
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the request went away meanwhile (its client hung up)
                continue
            if isinstance(outcome, CommandRefusedError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _take(self) -> list[tuple[CreateRequest, asyncio.Future[Created]]]:
        """The oldest waiting requests that fit one batch (one per car and key, one set of
        limits); the others keep their place for the next."""
        batch: list[tuple[CreateRequest, asyncio.Future[Created]]] = []
        later: list[tuple[CreateRequest, asyncio.Future[Created]]] = []
        cars: set[str] = set()
        keys: set[tuple[str, str]] = set()
        while self._waiting and len(batch) < self._max_batch:
            entry = self._waiting.popleft()
            item, future = entry
            request = item.request
            key = (request.requested_by, request.idempotency_key or "")
            if future.done():  # cancelled while waiting: nothing to do
                continue
            if (
                request.vin in cars
                or request.vin in self._cars_in_flight
                or (request.idempotency_key is not None and key in keys)
                or (batch and item.limits != batch[0][0].limits)
            ):
                later.append(entry)
                continue
            batch.append(entry)
            cars.add(request.vin)
            if request.idempotency_key is not None:
                keys.add(key)
        self._waiting.extendleft(reversed(later))
        self._cars_in_flight.update(cars)
        return batch


def _stopping() -> CommandRefusedError:
    return CommandRefusedError(
        "this gateway is stopping: send the command again (another instance, or this one "
        "once it is back, takes it)",
        status=503,
        kind="gateway-stopping",
    )
