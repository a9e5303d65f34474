"""A live stream takes what has come together as one batch (pure asyncio, no database).

Under load the all-commands stream writes one chunk per batch instead of one per event; the
order, the limit and the end of the stream must survive the batching.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from gateway.commands.events import CommandEventHub
from gateway.commands.lifecycle import Status
from gateway.commands.models import CommandEvent
from schemas import CommandAction

CAR = "WBAUF11080E900001"


def _event(transition_id: int) -> CommandEvent:
    return CommandEvent(
        transition_id=transition_id,
        command_id=uuid.uuid4(),
        vin=CAR,
        action=CommandAction.LOCK,
        status=Status.QUEUED,
        at=datetime.now(UTC),
    )


async def test_waiting_events_come_as_one_batch_in_order_up_to_the_limit() -> None:
    hub = CommandEventHub("postgresql://unused")
    async with hub.subscribe() as subscription:
        for transition_id in range(1, 6):
            hub.publish(_event(transition_id))
        first = await subscription.next_batch(1.0, limit=3)
        rest = await subscription.next_batch(1.0, limit=3)
    assert [e.transition_id for e in first] == [1, 2, 3]
    assert [e.transition_id for e in rest] == [4, 5]


async def test_no_event_within_the_timeout_is_an_empty_batch() -> None:
    hub = CommandEventHub("postgresql://unused")
    async with hub.subscribe() as subscription:
        assert await subscription.next_batch(0.01, limit=10) == []


async def test_a_batch_waits_for_the_first_event_then_takes_it() -> None:
    hub = CommandEventHub("postgresql://unused")
    async with hub.subscribe() as subscription:
        waiting = asyncio.create_task(subscription.next_batch(5.0, limit=10))
        await asyncio.sleep(0)
        hub.publish(_event(7))
        batch = await waiting
    assert [e.transition_id for e in batch] == [7]


async def test_the_events_before_the_end_are_delivered_then_the_stream_ends() -> None:
    hub = CommandEventHub("postgresql://unused")
    async with hub.subscribe() as subscription:
        hub.publish(_event(1))
        hub.publish(_event(2))
        hub.close()
        batch = await subscription.next_batch(1.0, limit=10)
        with pytest.raises(StopAsyncIteration):
            await subscription.next_batch(1.0, limit=10)
    assert [e.transition_id for e in batch] == [1, 2]
