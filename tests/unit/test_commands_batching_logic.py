"""How `CreateBatcher` forms batches and ends, with a store that only records (pure logic).

The database side (one transaction per batch, each request's own outcome) is tested against
PostgreSQL in tests/integration/test_commands_batching.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import pytest

from gateway.commands import CommandRefusedError, NewCommand, RateLimits
from gateway.commands.batching import CreateBatcher
from gateway.commands.store import CommandStore, CreateRequest
from schemas import CommandAction

CARS = [f"WBAUF11080E9{i:05d}" for i in range(4)]


class RecordingStore:
    """Answers every request with its own VIN; holds each batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def create_many(
        self, items: Sequence[CreateRequest], *, busy_policy: str, max_queued: int
    ) -> list[Any]:
        self.batches.append([item.request.vin for item in items])
        await self.release.wait()
        return [(item.request.vin, True) for item in items]


def _item(vin: str, key: str | None = None, limits: RateLimits | None = None) -> CreateRequest:
    request = NewCommand(
        vin=vin, action=CommandAction.LOCK, requested_by="booking", idempotency_key=key
    )
    return CreateRequest(request, 30, limits)


async def _started(batcher: CreateBatcher) -> asyncio.Task[None]:
    task = asyncio.create_task(batcher.run())
    await asyncio.sleep(0)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_car_waits_for_the_batch_that_holds_its_first_request() -> None:
    store = RecordingStore()
    batcher = CreateBatcher(
        cast(CommandStore, store), busy_policy="queue", max_queued=5, concurrency=2
    )
    running = await _started(batcher)
    requests = [
        asyncio.create_task(batcher.create(_item(vin)))
        for vin in (CARS[0], CARS[1], CARS[0], CARS[2], CARS[0])
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    # The first batch took one request per car; the second worker found only requests for
    # CARS[0], whose first is in flight: nothing it may take yet.
    assert store.batches == [[CARS[0], CARS[1], CARS[2]]]
    store.release.set()
    outcomes: list[Any] = await asyncio.gather(*requests)
    assert [vin for vin, _ in outcomes] == [CARS[0], CARS[1], CARS[0], CARS[2], CARS[0]]
    assert store.batches == [[CARS[0], CARS[1], CARS[2]], [CARS[0]], [CARS[0]]]
    await _stop(running)


async def test_one_key_or_other_limits_wait_for_the_next_batch() -> None:
    store = RecordingStore()
    store.release.set()
    batcher = CreateBatcher(cast(CommandStore, store), busy_policy="queue", max_queued=5)
    running = await _started(batcher)
    other = RateLimits(per_operator=1, per_vehicle=1, window_s=60)
    await asyncio.gather(
        batcher.create(_item(CARS[0], key="k")),
        batcher.create(_item(CARS[1], key="k")),
        batcher.create(_item(CARS[2], limits=other)),
        batcher.create(_item(CARS[3])),
    )
    assert store.batches[0] == [CARS[0], CARS[3]]
    assert sorted(v for batch in store.batches[1:] for v in batch) == [CARS[1], CARS[2]]
    await _stop(running)


async def test_stopping_refuses_what_waits_and_what_is_in_flight() -> None:
    store = RecordingStore()  # never released: the batch is in flight when the gateway stops
    batcher = CreateBatcher(cast(CommandStore, store), busy_policy="queue", max_queued=5)
    running = await _started(batcher)
    in_flight = asyncio.create_task(batcher.create(_item(CARS[0])))
    waiting = asyncio.create_task(batcher.create(_item(CARS[0])))
    for _ in range(3):
        await asyncio.sleep(0)
    assert store.batches == [[CARS[0]]]
    await _stop(running)
    for request in (in_flight, waiting):
        with pytest.raises(CommandRefusedError) as refused:
            await request
        assert (refused.value.status, refused.value.kind) == (503, "gateway-stopping")
