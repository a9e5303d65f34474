"""The command store against the real database: what the benchmark's fast paths must keep.

Results applied many in one transaction (as a result worker does when they queue up) end in
the same states, transitions and audit rows as applied one by one; unknown and foreign results
in such a batch are still told apart; pipelined creation keeps the busy and idempotency rules;
a dispatch sends a car's oldest command only, records the key that signed it, and rolls back
when the broker does not take it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.commands import CommandRefusedError, NewCommand, RateLimits
from gateway.commands.lifecycle import ResultEffect
from gateway.commands.store import (
    ClaimedCommand,
    CommandStore,
    Dispatched,
    DispatchOutcome,
    SignedCommand,
)
from schemas import (
    CommandAction,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Precondition,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_VINS = ("WBAUF11080E900001", "WBAUF11080E900002")


@pytest.fixture
async def store(migrated_database: str) -> AsyncIterator[CommandStore]:
    async with await psycopg.AsyncConnection.connect(migrated_database, autocommit=True) as conn:
        for vin in _VINS:
            await conn.execute(
                "INSERT INTO vehicles (vin, capabilities) VALUES (%s, %s)",
                (vin, ["lock", "unlock", "request_state"]),
            )
    async with AsyncConnectionPool(migrated_database, min_size=1, max_size=4, open=False) as pool:
        await pool.open(wait=True)
        yield CommandStore(pool)


def _request(vin: str, action: str = "lock", key: str | None = None) -> NewCommand:
    return NewCommand(
        vin=vin, action=CommandAction(action), requested_by="tester", idempotency_key=key
    )


async def _create(store: CommandStore, request: NewCommand) -> tuple[Any, bool]:
    return await store.create(request, ttl_s=30, busy_policy="queue", max_queued=2)


async def _send_many(
    store: CommandStore, codes: dict[str, int]
) -> tuple[dict[str, Dispatched], list[ClaimedCommand]]:
    """Dispatch to the cars of `codes` at once; the broker answers each with its code."""
    sent: list[ClaimedCommand] = []

    def sign(claimed: ClaimedCommand) -> SignedCommand:
        return SignedCommand(b"{}", "key-1")

    async def publish(claimed: ClaimedCommand, signed: SignedCommand) -> int:
        sent.append(claimed)
        return codes[claimed.vin]

    outcomes = await store.dispatch(dict.fromkeys(codes, "key-1"), sign, publish)
    return outcomes, sent


async def _send(store: CommandStore, vin: str, reason_code: int = 0) -> tuple[Any, ...]:
    outcomes, sent = await _send_many(store, {vin: reason_code})
    return outcomes[vin].outcome, outcomes[vin].events, sent


def _result(command_id: uuid.UUID, vin: str, outcome: str) -> CommandResultMessage:
    return CommandResultMessage(
        v=1,
        command_id=command_id,
        vin=vin,
        ts=int(time.time() * 1000),
        outcome=CommandOutcome(outcome),
    )


async def test_a_batch_of_results_applies_like_one_by_one(
    store: CommandStore, migrated_database: str
) -> None:
    a, _ = await _create(store, _request(_VINS[0]))
    b, _ = await _create(store, _request(_VINS[1], "unlock"))
    for vin in _VINS:
        outcome, events, sent = await _send(store, vin)
        assert outcome is DispatchOutcome.SENT
        assert [e.status.value for e in events] == ["sent"]
        assert len(sent) == 1
    batch = [
        _result(b.command_id, _VINS[1], "accepted"),
        _result(a.command_id, _VINS[0], "accepted"),
        _result(a.command_id, _VINS[0], "executed"),
        _result(b.command_id, _VINS[1], "executed"),
        _result(a.command_id, _VINS[0], "executed"),  # a redelivery
        _result(uuid.uuid4(), _VINS[0], "executed"),  # nobody sent it
        _result(b.command_id, _VINS[0], "accepted"),  # another car's command
    ]
    applied = await store.apply_results(batch)
    assert [a.effect for a in applied] == [
        ResultEffect.APPLY,
        ResultEffect.APPLY,
        ResultEffect.APPLY,
        ResultEffect.APPLY,
        ResultEffect.DUPLICATE,
        None,
        None,
    ]
    assert [a.dead_letter_reason for a in applied[5:]] == ["unknown_command", "vin_mismatch"]
    assert [a.event.status.value for a in applied[:4] if a.event] == [
        "accepted",
        "accepted",
        "executed",
        "executed",
    ]
    async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
        for command in (a, b):
            cur = await conn.execute(
                "SELECT array_agg(status::text ORDER BY id) FROM command_transitions "
                "WHERE command_id = %s",
                (command.command_id,),
            )
            assert (await cur.fetchone()) == (["queued", "sent", "accepted", "executed"],)
            cur = await conn.execute(
                "SELECT array_agg(action ORDER BY id), min(actor), max(actor) FROM audit_log "
                "WHERE detail ->> 'command_id' = %s",
                (str(command.command_id),),
            )
            actions, first_actor, last_actor = await cur.fetchone() or (None, None, None)
            assert actions == [
                "command.queued",
                "command.sent",
                "command.accepted",
                "command.executed",
            ]
            assert first_actor == last_actor == "tester"
            cur = await conn.execute(
                "SELECT status::text, key_id, attempts FROM commands WHERE id = %s",
                (command.command_id,),
            )
            assert (await cur.fetchone()) == ("executed", "key-1", 1)
    # Answers overtaken by later ones (another worker applied executed first) and
    # redeliveries: told apart without writing anything, in a batch and alone.
    late = [
        _result(a.command_id, _VINS[0], "accepted"),
        _result(b.command_id, _VINS[1], "executed"),
    ]
    assert [x.effect for x in await store.apply_results(late)] == [
        ResultEffect.STALE,
        ResultEffect.DUPLICATE,
    ]
    assert (await store.apply_result(late[0])).effect is ResultEffect.STALE
    record = await store.get(a.command_id)
    assert record is not None
    assert [t.status.value for t in record.transitions or []] == [
        "queued",
        "sent",
        "accepted",
        "executed",
    ]
    assert record.late_outcome is None


async def test_a_batch_writes_what_one_by_one_writes(
    store: CommandStore, migrated_database: str
) -> None:
    """The batch statement sets the same columns as the one-command statements: a rejection
    with its preconditions and detail, an execution with the state the car read back."""

    def rejected(command_id: uuid.UUID, vin: str) -> CommandResultMessage:
        return CommandResultMessage(
            v=1,
            command_id=command_id,
            vin=vin,
            ts=int(time.time() * 1000),
            outcome=CommandOutcome.REJECTED,
            reason=CommandReason.PRECONDITION_FAILED,
            failed_preconditions=(Precondition.DOORS_CLOSED, Precondition.IGNITION_OFF),
            detail="door open",
        )

    def executed(command_id: uuid.UUID, vin: str) -> CommandResultMessage:
        return CommandResultMessage.model_validate(
            _result(command_id, vin, "executed").model_dump()
            | {"state": {"locked": True, "odometer": 12.5}}
        )

    rows = []
    for one_by_one in (False, True):
        a, _ = await _create(store, _request(_VINS[0]))
        b, _ = await _create(store, _request(_VINS[1]))
        for vin in _VINS:
            await _send(store, vin)
        batch = [
            rejected(a.command_id, _VINS[0]),
            _result(b.command_id, _VINS[1], "accepted"),
            executed(b.command_id, _VINS[1]),
        ]
        if one_by_one:
            applied = [await store.apply_result(result) for result in batch]
        else:
            applied = await store.apply_results(batch)
        assert [x.effect for x in applied] == [ResultEffect.APPLY] * 3
        assert applied[0].event is not None
        assert applied[0].event.failed_preconditions == ["doors_closed", "ignition_off"]
        async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
            cur = await conn.execute(
                "SELECT c.vin, c.status::text, c.reason, c.detail, c.failed_preconditions, "
                "c.result_state, c.accepted_at IS NOT NULL, c.car_accepted_at IS NOT NULL, "
                "c.finished_at IS NOT NULL, c.car_finished_at IS NOT NULL, "
                "(SELECT array_agg(t.status::text || ' ' || t.actor || ' ' || "
                "        coalesce(t.detail ->> 'reason', '-') ORDER BY t.id) "
                " FROM command_transitions t WHERE t.command_id = c.id) "
                "FROM commands c WHERE c.id = ANY(%s) ORDER BY c.vin",
                ([a.command_id, b.command_id],),
            )
            rows.append(await cur.fetchall())
    batched, single = rows
    assert batched == single
    assert batched[0][1:6] == (
        "rejected",
        "precondition_failed",
        "door open",
        ["doors_closed", "ignition_off"],
        None,
    )
    assert batched[1][1] == "executed"
    assert batched[1][5] == {"locked": True, "odometer": 12.5}
    assert batched[1][6:10] == (True, True, True, True)


async def test_pipelined_creation_keeps_the_busy_and_idempotency_rules(
    store: CommandStore,
) -> None:
    first, created = await _create(store, _request(_VINS[0], key="k1"))
    assert created
    again, created = await _create(store, _request(_VINS[0], key="k1"))
    assert not created
    assert again.command_id == first.command_id
    with pytest.raises(CommandRefusedError) as reused:
        await _create(store, _request(_VINS[0], "unlock", key="k1"))
    assert reused.value.kind == "idempotency-key-reused"
    await _create(store, _request(_VINS[0], "unlock"))
    with pytest.raises(CommandRefusedError) as busy:
        await _create(store, _request(_VINS[0]))
    assert busy.value.kind == "vehicle-busy"
    # A replay is answered even while the car is busy: it creates nothing.
    replay, created = await _create(store, _request(_VINS[0], key="k1"))
    assert (replay.command_id, created) == (first.command_id, False)
    with pytest.raises(CommandRefusedError) as unsupported:
        await _create(store, _request(_VINS[1], "unlock_and_enable_driving"))
    assert unsupported.value.kind == "unsupported-action"
    with pytest.raises(CommandRefusedError) as unknown:
        await _create(store, _request("WBAUF11080E900009"))
    assert unknown.value.kind == "unknown-vehicle"


async def test_dispatch_sends_the_oldest_one_at_a_time_and_rolls_back_a_refusal(
    store: CommandStore,
) -> None:
    first, _ = await _create(store, _request(_VINS[0]))
    second, _ = await _create(store, _request(_VINS[0], "unlock"))
    # No subscriber: rolled back, still queued, tried again later.
    outcome, events, sent = await _send(store, _VINS[0], reason_code=0x10)
    assert (outcome, events) == (DispatchOutcome.NO_SUBSCRIBER, [])
    assert [c.command_id for c in sent] == [first.command_id]
    assert (await store.get(first.command_id)).status.value == "queued"  # type: ignore[union-attr]
    outcome, events, sent = await _send(store, _VINS[0])
    assert outcome is DispatchOutcome.SENT
    assert [c.command_id for c in sent] == [first.command_id]
    assert sent[0].seconds_left > 25
    # One in flight: the second waits.
    outcome, _, sent = await _send(store, _VINS[0])
    assert (outcome, sent) == (DispatchOutcome.NOTHING, [])
    await store.apply_results([_result(first.command_id, _VINS[0], "executed")])
    outcome, _, sent = await _send(store, _VINS[0])
    assert outcome is DispatchOutcome.SENT
    assert [c.command_id for c in sent] == [second.command_id]
    # The broker refuses (not authorised): failed, with the reason.
    third, _ = await _create(store, _request(_VINS[1]))
    outcome, events, _ = await _send(store, _VINS[1], reason_code=0x87)
    assert outcome is DispatchOutcome.REFUSED
    assert [(e.status.value, e.reason) for e in events] == [("failed", "broker_refused")]
    record = await store.get(third.command_id)
    assert record is not None
    assert [t.status.value for t in record.transitions or []] == ["queued", "failed"]


async def test_one_dispatch_for_many_cars_records_each_cars_outcome(store: CommandStore) -> None:
    a, _ = await _create(store, _request(_VINS[0]))
    b, _ = await _create(store, _request(_VINS[1]))
    outcomes, sent = await _send_many(store, {_VINS[0]: 0x10, _VINS[1]: 0})
    assert {c.command_id for c in sent} == {a.command_id, b.command_id}
    assert outcomes[_VINS[0]].outcome is DispatchOutcome.NO_SUBSCRIBER
    assert outcomes[_VINS[1]].outcome is DispatchOutcome.SENT
    assert [e.command_id for e in outcomes[_VINS[1]].events] == [b.command_id]
    first = await store.get(a.command_id)
    second = await store.get(b.command_id)
    assert first is not None
    assert second is not None
    assert (first.status.value, first.attempts, first.sent_at) == ("queued", 1, None)
    assert (second.status.value, second.attempts, second.key_id) == ("sent", 1, "key-1")
    # The car now subscribed: sent; the other has one in flight, so nothing for it.
    outcomes, sent = await _send_many(store, {_VINS[0]: 0, _VINS[1]: 0})
    assert [c.command_id for c in sent] == [a.command_id]
    assert outcomes[_VINS[0]].outcome is DispatchOutcome.SENT
    assert outcomes[_VINS[1]].outcome is DispatchOutcome.NOTHING


async def test_rate_limits_are_counted_in_the_creating_transaction(store: CommandStore) -> None:
    limits = RateLimits(per_operator=3, per_vehicle=1, window_s=60)

    async def create(request: NewCommand) -> tuple[Any, bool]:
        return await store.create(
            request, ttl_s=30, busy_policy="queue", max_queued=5, limits=limits
        )

    first, _ = await create(_request(_VINS[0], key="once"))
    with pytest.raises(CommandRefusedError) as per_car:
        await create(_request(_VINS[0], "unlock"))
    assert (per_car.value.status, per_car.value.kind) == (429, "rate-limited")
    assert per_car.value.retry_after_s is not None
    assert 1 <= per_car.value.retry_after_s <= 60
    assert _VINS[0] in str(per_car.value)
    # A replay creates nothing: never limited.
    replay, created = await create(_request(_VINS[0], key="once"))
    assert (replay.command_id, created) == (first.command_id, False)
    await create(_request(_VINS[1]))
    with pytest.raises(CommandRefusedError) as per_car_again:
        await create(_request(_VINS[1], "unlock"))
    assert per_car_again.value.kind == "rate-limited"


async def test_the_operators_count_is_kept_per_second_and_forgotten_after_an_hour(
    store: CommandStore, migrated_database: str
) -> None:
    limits = RateLimits(per_operator=2, per_vehicle=0, window_s=60)

    async def create(vin: str, action: str) -> bool:
        _, created = await store.create(
            _request(vin, action), ttl_s=30, busy_policy="queue", max_queued=9, limits=limits
        )
        return created

    async def counted(conn: psycopg.AsyncConnection[Any], where: str = "true") -> int:
        cur = await conn.execute(
            f"SELECT coalesce(sum(n), 0) FROM command_rate_counts WHERE {where}"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    assert [await create(vin, "lock") for vin in _VINS] == [True, True]
    old = "second < floor(extract(epoch FROM now()))::bigint - 60"
    async with await psycopg.AsyncConnection.connect(migrated_database, autocommit=True) as conn:
        assert await counted(conn) == 2
        # A minute later (as the rows tell it): outside the window, no longer counted.
        await conn.execute("UPDATE command_rate_counts SET second = second - 61")
    assert [await create(vin, "unlock") for vin in _VINS] == [True, True]
    with pytest.raises(CommandRefusedError) as refused:
        await create(_VINS[0], "lock")
    assert refused.value.kind == "rate-limited"
    assert refused.value.retry_after_s is not None
    assert 1 <= refused.value.retry_after_s <= 60
    async with await psycopg.AsyncConnection.connect(migrated_database, autocommit=True) as conn:
        assert (await counted(conn, old), await counted(conn)) == (2, 4)
        # An hour older still: the sweeper deletes them; this minute's stay.
        await conn.execute(f"UPDATE command_rate_counts SET second = second - 3600 WHERE {old}")
        await store.sweep(grace_s=5, answer_timeout_s=15, verify_window_s=600)
        assert (await counted(conn, old), await counted(conn)) == (0, 2)
