"""New commands queued in batches (group commit) against the real database.

Requests that arrive together share one transaction, and each still gets what it would have
got alone: its command, the command its idempotency key made, or its own refusal (unknown
car, rate limit) without touching the others. Two requests for one car never share a batch,
and keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.commands import CommandRefusedError, NewCommand, RateLimits
from gateway.commands.batching import CreateBatcher
from gateway.commands.store import CommandStore, CreateRequest
from schemas import CommandAction

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

VINS = [f"WBAUF11080E9{i:05d}" for i in range(20)]
UNKNOWN_VIN = "WBAUF11080E999999"


@pytest.fixture
async def store(migrated_database: str) -> AsyncIterator[CommandStore]:
    async with (
        await psycopg.AsyncConnection.connect(migrated_database, autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        await cur.executemany(
            "INSERT INTO vehicles (vin, capabilities) VALUES (%s, %s)",
            [(vin, ["lock", "unlock"]) for vin in VINS],
        )
    async with AsyncConnectionPool(migrated_database, min_size=1, max_size=4, open=False) as pool:
        await pool.open(wait=True)
        yield CommandStore(pool)


@pytest.fixture
async def batcher(store: CommandStore) -> AsyncIterator[CreateBatcher]:
    batcher = CreateBatcher(store, busy_policy="queue", max_queued=2)
    running = asyncio.create_task(batcher.run())
    await asyncio.sleep(0)  # run() has started
    yield batcher
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


def _item(
    vin: str, key: str | None = None, limits: RateLimits | None = None, action: str = "lock"
) -> CreateRequest:
    request = NewCommand(
        vin=vin, action=CommandAction(action), requested_by="booking", idempotency_key=key
    )
    return CreateRequest(request, 30, limits)


async def _all(batcher: CreateBatcher, items: list[CreateRequest]) -> list[Any]:
    return await asyncio.gather(*(batcher.create(i) for i in items), return_exceptions=True)


async def _issued_at(migrated_database: str) -> list[tuple[str, Any, Any]]:
    async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
        cur = await conn.execute(
            "SELECT vin, issued_at, xmin::text FROM commands ORDER BY created_at, vin"
        )
        return await cur.fetchall()


async def test_requests_that_arrive_together_share_one_transaction(
    batcher: CreateBatcher, migrated_database: str
) -> None:
    outcomes = await _all(batcher, [_item(vin) for vin in VINS])
    assert all(created for _, created in outcomes)
    assert [record.vin for record, _ in outcomes] == VINS
    rows = await _issued_at(migrated_database)
    assert sorted(vin for vin, _, _ in rows) == VINS
    # One insert statement in one transaction: one clock reading, one transaction id.
    assert len({issued for _, issued, _ in rows}) == 1
    assert len({xid for _, _, xid in rows}) == 1


async def test_each_request_gets_its_own_refusal(batcher: CreateBatcher) -> None:
    outcomes = await _all(
        batcher,
        [_item(VINS[0]), _item(UNKNOWN_VIN), _item(VINS[1], action="unlock_and_enable_driving")],
    )
    assert outcomes[0][1] is True
    assert isinstance(outcomes[1], CommandRefusedError)
    assert (outcomes[1].status, outcomes[1].kind) == (404, "unknown-vehicle")
    assert isinstance(outcomes[2], CommandRefusedError)
    assert outcomes[2].kind == "unsupported-action"


async def test_one_car_twice_keeps_its_order_in_two_transactions(
    batcher: CreateBatcher, migrated_database: str
) -> None:
    outcomes = await _all(batcher, [_item(VINS[0]), _item(VINS[0], action="unlock")])
    first, second = (record for record, _ in outcomes)
    assert (first.action, second.action) == (CommandAction.LOCK, CommandAction.UNLOCK)
    assert first.created_at < second.created_at
    rows = await _issued_at(migrated_database)
    assert len({xid for _, _, xid in rows}) == 2
    # A third is over max_queued (2 active): refused, the two stand.
    with pytest.raises(CommandRefusedError) as busy:
        await batcher.create(_item(VINS[0]))
    assert busy.value.kind == "vehicle-busy"


async def test_one_key_twice_is_one_command(batcher: CreateBatcher) -> None:
    outcomes = await _all(batcher, [_item(VINS[0], key="k-1"), _item(VINS[0], key="k-1")])
    (first, created_first), (again, created_again) = outcomes
    assert first.command_id == again.command_id
    assert (created_first, created_again) == (True, False)
    # The same key for another car, in a batch with others: refused alone.
    outcomes = await _all(batcher, [_item(VINS[1], key="k-1"), _item(VINS[2], key="k-2")])
    assert isinstance(outcomes[0], CommandRefusedError)
    assert outcomes[0].kind == "idempotency-key-reused"
    assert outcomes[1][1] is True


async def test_the_operators_limit_counts_the_batch_itself(batcher: CreateBatcher) -> None:
    limits = RateLimits(per_operator=3, per_vehicle=0, window_s=60)
    outcomes = await _all(batcher, [_item(vin, limits=limits) for vin in VINS[:5]])
    assert [o[1] for o in outcomes[:3]] == [True, True, True]
    for refused in outcomes[3:]:
        assert isinstance(refused, CommandRefusedError)
        assert (refused.status, refused.kind) == (429, "rate-limited")
        assert refused.retry_after_s is not None
        assert 1 <= refused.retry_after_s <= 60


async def test_without_run_each_request_goes_on_its_own(store: CommandStore) -> None:
    idle = CreateBatcher(store, busy_policy="queue", max_queued=2)
    record, created = await idle.create(_item(VINS[0]))
    assert created
    assert record.vin == VINS[0]
