"""The command lifecycle in PostgreSQL: every state change is one conditional statement.

Each move is `UPDATE commands ... WHERE status = <expected>` together with its row in
`command_transitions`, its row in `audit_log` (actor: the operator who asked) and a NOTIFY on
`tgw_commands` carrying the new state, all in one statement. Two gateway instances (or a
restarted one and its sweeper) can therefore never both move a command: the second finds the
status changed and moves nothing. The database's clock decides deadlines, so instances with
slightly different clocks agree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, LiteralString
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.commands.errors import CommandRefusedError
from gateway.commands.lifecycle import (
    ACTIVE,
    IN_FLIGHT,
    ResultEffect,
    Status,
    allowed_sources,
    effect_of_result,
    target_status,
)
from gateway.commands.models import (
    CommandEvent,
    CommandPage,
    CommandRecord,
    NewCommand,
    RateLimits,
    Transition,
)
from gateway.errors import GatewayError
from schemas import CommandAction, CommandResultMessage, ms_to_datetime

__all__ = [
    "EVENTS_CHANNEL",
    "ClaimedCommand",
    "CommandStore",
    "CreateRequest",
    "DispatchOutcome",
    "Dispatched",
    "GatewayReason",
    "ResultApplied",
    "SignedCommand",
]

EVENTS_CHANNEL = "tgw_commands"
GATEWAY_ACTOR = "gateway"

# Advisory lock namespaces (first key of pg_advisory_xact_lock(int, int)); the second key is
# hashtext(vin). Creating and dispatching use different ones so neither waits for the other.
_CREATE_LOCK = 0x7467_0001
_DISPATCH_LOCK = 0x7467_0002

_ACTIVE = [s.value for s in ACTIVE]
_IN_FLIGHT = [s.value for s in IN_FLIGHT]


class GatewayReason(StrEnum):
    """Reasons the gateway itself gives (the car's are `schemas.CommandReason`)."""

    DEADLINE_PASSED = "deadline_passed"  # expired: the car did not take it in time
    NO_FINAL_ANSWER = "no_final_answer"  # timed out after accepted
    BROKER_REFUSED = "broker_refused"  # the broker would not take it (ACL)


_COMMAND_COLUMNS: LiteralString = """
    c.id AS command_id, c.vin, c.action, c.status, c.requested_by, c.idempotency_key,
    c.created_at, c.issued_at, c.expires_at, c.sent_at, c.accepted_at, c.finished_at,
    c.reason, c.detail, c.failed_preconditions, c.result_state, c.late_outcome, c.key_id,
    c.attempts
"""

_GET_COMMAND = f"""
SELECT {_COMMAND_COLUMNS},
       (SELECT coalesce(json_agg(json_build_object(
                   'id', t.id, 'status', t.status, 'at', t.at, 'actor', t.actor,
                   'detail', t.detail) ORDER BY t.at, t.id), '[]'::json)
        FROM command_transitions t WHERE t.command_id = c.id) AS transitions
FROM commands c WHERE c.id = %s
"""  # noqa: S608  # constants only

# The cars of a batch of new commands, locked in one order (two batches never wait for each
# other in opposite orders): one creator per car at a time, so the busy check cannot be raced.
_LOCK_CARS = """
SELECT count(pg_advisory_xact_lock(%s, hashtext(v)))
FROM (SELECT v FROM unnest(%s::text[]) AS v ORDER BY v) AS cars
"""
_BY_KEYS = f"""
SELECT {_COMMAND_COLUMNS} FROM commands c
JOIN unnest(%s::text[], %s::text[]) AS k (requester, key)
  ON c.requested_by = k.requester AND c.idempotency_key = k.key
"""  # noqa: S608  # constants only
_CARS = """
SELECT v.vin, v.capabilities,
       (SELECT count(*) FROM commands c
        WHERE c.vin = v.vin AND c.status = ANY(%(active)s)) AS active
FROM vehicles v WHERE v.vin = ANY(%(vins)s)
"""
# The rate limits' counts, in the creating transaction after the cars' locks (so the per-car
# limit is exact; the per-operator one may be exceeded by the requests in flight in other
# transactions), once per car and once per operator of the batch. Per car: its commands of the
# window, each count only up to its limit (at most `limit` index entries; a 0 limit counts
# nothing). Per operator: the per-second counts (command_rate_counts, at most one row per second
# and session), with when the oldest of them leaves the window (for Retry-After).
_RATE_COUNTS = """
SELECT 'vin' AS counted, v AS value, (
    SELECT count(*) FROM (
        SELECT 1 FROM commands
        WHERE vin = v AND created_at > now() - make_interval(secs => %(window)s)
        LIMIT %(per_vehicle)s) x) AS n,
    NULL::float8 AS free_in
FROM unnest(%(vins)s::text[]) AS v
UNION ALL
SELECT 'requested_by', o, coalesce(sum(r.n), 0),
       min(r.second) + %(window)s - extract(epoch FROM now())::float8
FROM unnest(%(operators)s::text[]) AS o
LEFT JOIN command_rate_counts r
  ON r.requested_by = o AND %(per_operator)s > 0
 AND r.second > floor(extract(epoch FROM now()))::bigint - %(window)s
GROUP BY o
"""
# Insert, record `queued`, audit, count (per operator and second) and announce, for every new
# command of a batch in one statement. ON CONFLICT: the same idempotency key committed by a
# concurrent request; then nothing is inserted, counted or announced for that one.
_INSERT_COMMANDS = f"""
WITH clock AS (SELECT date_trunc('milliseconds', clock_timestamp()) AS t),
inserted AS (
    INSERT INTO commands AS c
        (vin, action, requested_by, idempotency_key, issued_at, expires_at, nonce)
    SELECT n.vin, n.action, n.requester, n.key, clock.t,
           clock.t + make_interval(secs => n.ttl), n.nonce
    FROM unnest(%(vins)s::text[], %(actions)s::text[], %(requesters)s::text[],
                %(keys)s::text[], %(ttls)s::int[], %(nonces)s::text[])
         AS n (vin, action, requester, key, ttl, nonce), clock
    ON CONFLICT ON CONSTRAINT commands_idempotency_key DO NOTHING
    RETURNING {_COMMAND_COLUMNS}
), ttl AS (
    SELECT i.*, 'operator:' || i.requested_by AS actor,
           round(extract(epoch FROM i.expires_at - i.issued_at))::int AS ttl_s
    FROM inserted i
), transition AS (
    INSERT INTO command_transitions (command_id, status, actor, detail)
    SELECT command_id, 'queued', actor, jsonb_build_object('ttl_s', ttl_s) FROM ttl
    RETURNING id, command_id, at
), audited AS (
    INSERT INTO audit_log (actor, action, target, detail)
    SELECT requested_by, 'command.queued', vin, jsonb_build_object(
        'command_id', command_id, 'action', action, 'status', 'queued',
        'by', actor, 'ttl_s', ttl_s, 'idempotency_key', idempotency_key)
    FROM ttl
    RETURNING 1
), counted AS (
    INSERT INTO command_rate_counts AS r (requested_by, second, session, n)
    SELECT requested_by, floor(extract(epoch FROM now()))::bigint, pg_backend_pid(), count(*)
    FROM inserted GROUP BY requested_by
    ON CONFLICT (requested_by, second, session) DO UPDATE SET n = r.n + EXCLUDED.n
    RETURNING 1
)
SELECT i.*, pg_notify('{EVENTS_CHANNEL}', json_build_object(
    'transition_id', t.id, 'command_id', i.command_id, 'vin', i.vin, 'action', i.action,
    'status', 'queued', 'at', t.at)::text) AS notified
FROM inserted i JOIN transition t ON t.command_id = i.command_id
"""  # noqa: S608  # constants only
# Per-second counts older than the longest rate window are of no more use.
_RATE_COUNTS_KEPT_S = 3600  # CommandSettings.rate_limit_window_s at most
_FORGET_RATE_COUNTS = (
    "DELETE FROM command_rate_counts WHERE second < floor(extract(epoch FROM now()))::bigint - %s"
)
# Only when refusing a car: when the oldest command that counts leaves the window (Retry-After).
_FREE_IN = """
SELECT extract(epoch FROM min(created_at) + make_interval(secs => %(window)s) - now())
FROM (
    SELECT created_at FROM commands
    WHERE vin = %(vin)s AND created_at > now() - make_interval(secs => %(window)s)
    ORDER BY created_at DESC LIMIT %(limit)s) newest
"""

# After a state change (the rows of `moved`, each with its `actor` and `transition_detail`):
# its row in command_transitions, its audit row, its NOTIFY; the event's columns.
_ANNOUNCE = f"""
), transition AS (
    INSERT INTO command_transitions (command_id, status, actor, detail)
    SELECT id, status, actor, transition_detail FROM moved
    RETURNING id, command_id, status, at
), audited AS (
    INSERT INTO audit_log (actor, action, target, detail)
    SELECT m.requested_by, 'command.' || m.status, m.vin, jsonb_build_object(
        'command_id', m.id, 'action', m.action, 'status', m.status, 'by', m.actor,
        'reason', m.reason, 'detail', m.detail)
    FROM moved m
    RETURNING 1
)
SELECT t.id AS transition_id, t.command_id, m.vin, m.action, t.status, t.at, m.reason, m.detail,
       m.failed_preconditions,
       pg_notify('{EVENTS_CHANNEL}', json_build_object(
           'transition_id', t.id, 'command_id', t.command_id, 'vin', m.vin, 'action', m.action,
           'status', t.status, 'at', t.at, 'reason', m.reason, 'detail', m.detail,
           'failed_preconditions', m.failed_preconditions)::text) AS notified,
       (extract(epoch FROM m.issued_at) * 1000)::bigint AS issued_ms,
       (extract(epoch FROM m.expires_at) * 1000)::bigint AS expires_ms,
       extract(epoch FROM m.expires_at - clock_timestamp())::float8 AS left_s, m.nonce
FROM transition t JOIN moved m ON m.id = t.command_id
"""  # noqa: S608  # constants only
_MOVED_COLUMNS = """c.id, c.vin, c.action, c.status, c.requested_by, c.reason, c.detail,
        c.failed_preconditions, c.issued_at, c.expires_at, c.nonce"""

# One state change, for every row `where` selects: update, transition, audit, notify.
_MOVE = f"""
WITH moved AS (
    UPDATE commands c SET status = %(to)s, updated_at = now() {{sets}}
    WHERE {{where}}
    RETURNING {_MOVED_COLUMNS},
        %(actor)s::text AS actor, %(transition_detail)s::jsonb AS transition_detail
{_ANNOUNCE}"""  # noqa: S608  # constants only


def _move(where: LiteralString, sets: LiteralString = "") -> sql.Composed:
    return sql.SQL(_MOVE).format(sets=sql.SQL(sets), where=sql.SQL(where))


_MOVE_ONE = {
    Status.SENT: _move(
        "c.id = %(id)s AND c.status = 'queued'",
        ", sent_at = now(), key_id = %(key_id)s, attempts = c.attempts + 1",
    ),
    Status.ACCEPTED: _move(
        "c.id = %(id)s AND c.vin = %(vin)s AND c.status = ANY(%(from)s)",
        ", accepted_at = now(), car_accepted_at = %(car_at)s",
    ),
    Status.EXPIRED: _move(
        "c.id = %(id)s AND c.vin = %(vin)s AND c.status = ANY(%(from)s)",
        ", finished_at = now(), reason = %(reason)s, detail = %(detail)s",
    ),
    Status.FAILED: _move(
        "c.id = %(id)s AND c.vin = %(vin)s AND c.status = ANY(%(from)s)",
        ", finished_at = now(), car_finished_at = %(car_at)s, reason = %(reason)s,"
        " detail = %(detail)s, failed_preconditions = %(preconditions)s,"
        " result_state = %(state)s",
    ),
}
_MOVE_ONE[Status.REJECTED] = _MOVE_ONE[Status.FAILED]
_MOVE_ONE[Status.EXECUTED] = _MOVE_ONE[Status.FAILED]

# Many cars' results in one statement (a result worker's batch): each row of `u` moves its
# command as `_MOVE_ONE[target]` would, `accepted` setting the acceptance columns and the final
# states the outcome's. Never two rows for one command in a statement (see `apply_results`).
_APPLY_RESULTS = f"""
WITH u AS (
    SELECT * FROM unnest(
        %(ids)s::uuid[], %(vins)s::text[], %(targets)s::text[], %(sources)s::text[],
        %(car_ats)s::timestamptz[], %(reasons)s::text[], %(details)s::text[],
        %(preconditions)s::text[], %(states)s::text[], %(transition_details)s::text[])
    AS u (id, vin, target, sources, car_at, reason, detail, preconditions, state,
          transition_detail)
), moved AS (
    UPDATE commands c SET
        status = u.target, updated_at = now(),
        accepted_at = CASE WHEN u.target = 'accepted' THEN now() ELSE c.accepted_at END,
        car_accepted_at = CASE WHEN u.target = 'accepted' THEN u.car_at
                               ELSE c.car_accepted_at END,
        finished_at = CASE WHEN u.target = 'accepted' THEN c.finished_at ELSE now() END,
        car_finished_at = CASE WHEN u.target = 'accepted' THEN c.car_finished_at
                               ELSE u.car_at END,
        reason = CASE WHEN u.target = 'accepted' THEN c.reason ELSE u.reason END,
        detail = CASE WHEN u.target = 'accepted' THEN c.detail ELSE u.detail END,
        failed_preconditions = CASE WHEN u.target = 'accepted' THEN c.failed_preconditions
            ELSE ARRAY(SELECT jsonb_array_elements_text(u.preconditions::jsonb)) END,
        result_state = CASE WHEN u.target = 'accepted' THEN c.result_state
                            ELSE u.state::jsonb END
    FROM u
    WHERE c.id = u.id AND c.vin = u.vin AND c.status = ANY(string_to_array(u.sources, ','))
    RETURNING {_MOVED_COLUMNS},
        'car:' || c.vin AS actor, u.transition_detail::jsonb AS transition_detail
{_ANNOUNCE}"""  # noqa: S608  # constants only
# A batch's commands locked first, in one order, so that two batches never wait for each
# other's rows in opposite orders.
_LOCK_COMMANDS = "SELECT 1 FROM commands WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_STATUS_OF = "SELECT id, vin, status FROM commands WHERE id = ANY(%s)"

# Dispatch, for one car or many at once, in one transaction of two round trips:
#   1. BEGIN; try each car's dispatch lock (the cars it got are kept in a transaction-local
#      setting); claim each locked car's oldest queued command, if it has none in flight
#      (FOR UPDATE: no result or sweep moves it meanwhile).
#   2. publish every claimed command and await the PUBACKs; then record `sent` for those the
#      broker took (and why not for the others) and COMMIT.
# The claim is a statement of its own, after the locks: its snapshot sees everything the
# previous holder of a car's lock committed, so the in-flight check cannot be raced.
_TRY_DISPATCH_LOCKS = """
SELECT set_config('tgw.dispatch_locked', coalesce(
           string_agg(v, ',') FILTER (WHERE pg_try_advisory_xact_lock(%s, hashtext(v))), ''),
       true)
FROM unnest(%s::text[]) AS v
"""
# Commands with under a second left are never sent (message expiry is whole seconds, rounded
# down); the sweeper expires them at their deadline.
_CLAIM = """
SELECT c.id, c.vin, c.action,
       (extract(epoch FROM c.issued_at) * 1000)::bigint AS issued_ms,
       (extract(epoch FROM c.expires_at) * 1000)::bigint AS expires_ms,
       extract(epoch FROM c.expires_at - clock_timestamp())::float8 AS left_s,
       c.nonce
FROM unnest(string_to_array(current_setting('tgw.dispatch_locked', true), ',')) AS v (vin),
LATERAL (
    SELECT q.id, q.vin, q.action, q.issued_at, q.expires_at, q.nonce FROM commands q
    WHERE q.vin = v.vin AND q.status = 'queued'
      AND q.expires_at - clock_timestamp() >= interval '1 second'
      AND NOT EXISTS (SELECT 1 FROM commands f
                      WHERE f.vin = v.vin AND f.status = ANY(%(in_flight)s))
    ORDER BY q.created_at, q.id LIMIT 1 FOR UPDATE
) c
"""
_RECORD_SENT = _move(
    "c.id = ANY(%(ids)s) AND c.status = 'queued'",
    ", sent_at = now(), attempts = c.attempts + 1, key_id = ("
    "SELECT u.key_id FROM unnest(%(ids)s::uuid[], %(key_ids)s::text[]) AS u (id, key_id)"
    " WHERE u.id = c.id)",
)
# The broker has no session for these cars: still queued, offered again later.
_NO_SUBSCRIBER = "UPDATE commands SET attempts = attempts + 1 WHERE id = ANY(%s)"


_EXPIRE_QUEUED = _move(
    "c.id IN (SELECT id FROM commands WHERE status = 'queued' AND expires_at <= now() "
    "FOR UPDATE SKIP LOCKED)",
    ", finished_at = now(), reason = 'deadline_passed',"
    " detail = 'its deadline passed before it could be sent to the car'",
)
_EXPIRE_SENT = _move(
    "c.id IN (SELECT id FROM commands WHERE status = 'sent' "
    "AND expires_at + make_interval(secs => %(grace_s)s) <= now() FOR UPDATE SKIP LOCKED)",
    ", finished_at = now(), reason = 'deadline_passed',"
    " detail = 'the car did not take it before its deadline (offline or out of coverage)'",
)
_TIME_OUT = _move(
    "c.id IN (SELECT id FROM commands WHERE status = 'accepted' "
    "AND accepted_at + make_interval(secs => %(timeout_s)s) <= now() FOR UPDATE SKIP LOCKED)",
    ", finished_at = now(), reason = 'no_final_answer',"
    " detail = 'the car accepted it but did not say executed or failed in time'",
)
# Telemetry (latest state) or a lock event at or after the car accepted shows the expected lock.
_VERIFY = _move(
    """
    c.id IN (
        SELECT x.id FROM commands x
        LEFT JOIN latest_state s ON s.vin = x.vin
        WHERE x.status = 'executed'
          AND x.finished_at > now() - make_interval(secs => %(window_s)s)
          AND x.action IN ('lock', 'lock_and_disable_driving',
                           'unlock', 'unlock_and_enable_driving')
          AND (
            (s.locked = (x.action IN ('lock', 'lock_and_disable_driving'))
             AND s.time >= COALESCE(x.car_accepted_at, x.car_finished_at))
            OR EXISTS (
                SELECT 1 FROM events e
                WHERE e.vin = x.vin
                  AND e.time >= COALESCE(x.car_accepted_at, x.car_finished_at)
                  AND e.type = CASE WHEN x.action IN ('lock', 'lock_and_disable_driving')
                                    THEN 'locked' ELSE 'unlocked' END)
          )
        FOR UPDATE OF x SKIP LOCKED
    )
    """
)


@dataclass(frozen=True, slots=True)
class ClaimedCommand:
    """The oldest queued command of a car, locked for sending."""

    command_id: UUID
    vin: str
    action: CommandAction
    issued_at_ms: int
    expires_at_ms: int
    seconds_left: float  # when it was claimed (`claimed_at`, monotonic)
    nonce: str
    claimed_at: float = field(default_factory=time.monotonic)

    def seconds_left_now(self) -> float:
        return self.seconds_left - (time.monotonic() - self.claimed_at)


class DispatchOutcome(StrEnum):
    SENT = "sent"
    NOTHING = "nothing"  # no queued command, or the car has one in flight
    LOCKED = "locked"  # another dispatcher is at this car right now
    NO_SUBSCRIBER = "no_subscriber"  # the broker has no session for the car: try again later
    REFUSED = "refused"  # the broker refused it: failed
    ERROR = "error"  # signing or publishing failed: still queued, try again later


@dataclass(slots=True)
class Dispatched:
    """What a dispatch did for one car: the outcome, its state changes, and any error."""

    outcome: DispatchOutcome
    events: list[CommandEvent] = field(default_factory=list)
    error: Exception | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # until committed


@dataclass(frozen=True, slots=True)
class ResultApplied:
    """What a car's result did."""

    effect: ResultEffect | None  # None: not applicable to any command (dead-lettered)
    dead_letter_reason: str | None = None
    dead_letter_detail: str | None = None
    event: CommandEvent | None = None


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A claimed command as it goes to the car: the signed payload and the key that signed it."""

    payload: bytes
    key_id: str


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One command to queue: the request, its time to live, the rate limits it is held to."""

    request: NewCommand
    ttl_s: int
    limits: RateLimits | None = None


Sign = Callable[[ClaimedCommand], SignedCommand]
"""Sign a claimed command (raises `SigningKeyError` when the key cannot be used)."""
Publish = Callable[[ClaimedCommand, SignedCommand], Awaitable[int]]
"""Publish a signed command; return the PUBACK's reason code value."""


def _event(row: dict[str, Any]) -> CommandEvent:
    return CommandEvent(
        transition_id=row["transition_id"],
        command_id=row["command_id"],
        vin=row["vin"],
        action=row["action"],
        status=row["status"],
        at=row["at"],
        reason=row["reason"],
        detail=row["detail"],
        failed_preconditions=list(row["failed_preconditions"] or []),
    )


def _encode_cursor(created_at: datetime, command_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{command_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, command_id = raw.split("|")
        return datetime.fromisoformat(created_at), UUID(command_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise CommandRefusedError(
            "the cursor is not one this API gave out: pass next_cursor unchanged",
            status=422,
            kind="bad-cursor",
        ) from exc


class CommandStore:
    """Commands in the database, through the gateway's pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in autocommit mode: a lone statement is its own transaction, one
        round trip instead of three (BEGIN, the statement, COMMIT); several statements that
        must be atomic still go in `conn.transaction()`."""
        async with self._pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                # Back as the pool lends it; a connection that cannot be reset is not lent again.
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    await conn.set_autocommit(False)
                else:
                    await conn.close()

    # --- requests (API) ----------------------------------------------------------------------

    async def create(
        self,
        request: NewCommand,
        *,
        ttl_s: int,
        busy_policy: str,
        max_queued: int,
        limits: RateLimits | None = None,
    ) -> tuple[CommandRecord, bool]:
        """Queue a command, or return the one this requester made with the same idempotency
        key (then the bool is False; a replay is never rate-limited: it creates nothing).

        Raises:
            CommandRefusedError: over a rate limit (429), unknown car, action it cannot do,
                busy, or a reused key.
        """
        [outcome] = await self.create_many(
            [CreateRequest(request, ttl_s, limits)], busy_policy=busy_policy, max_queued=max_queued
        )
        if isinstance(outcome, CommandRefusedError):
            raise outcome
        return outcome

    async def create_many(
        self, items: Sequence[CreateRequest], *, busy_policy: str, max_queued: int
    ) -> list[tuple[CommandRecord, bool] | CommandRefusedError]:
        """`create` for many requests in one transaction: one commit and a few statements
        for all of them. Each gets its own outcome, in order: the command and whether it was
        created now, or why it was refused.

        The requests name different cars and different idempotency keys, and share their
        rate limits (`CreateBatcher` makes such batches).
        """
        vins = [item.request.vin for item in items]
        keyed = [item.request for item in items if item.request.idempotency_key is not None]
        limits = items[0].limits
        if len(set(vins)) < len(vins) or any(item.limits != limits for item in items):
            raise ValueError("a batch of new commands: one per car, all with the same limits")
        outcomes: list[tuple[CommandRecord, bool] | CommandRefusedError | None]
        outcomes = [None] * len(items)
        new: list[int] = []
        # Pipelined: BEGIN, the cars' locks, the key lookups and the counts travel together,
        # then the insert with COMMIT: two round trips. Each statement still starts after the
        # one before has finished, so the checks see every command committed before the locks.
        async with self._pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                await conn.execute(_LOCK_CARS, (_CREATE_LOCK, vins))
                replayed = conn.cursor(row_factory=dict_row)
                if keyed:
                    await replayed.execute(
                        _BY_KEYS,
                        ([r.requested_by for r in keyed], [r.idempotency_key for r in keyed]),
                    )
                counts = conn.cursor()
                if limits is not None:
                    await counts.execute(
                        _RATE_COUNTS,
                        {
                            "vins": vins,
                            "operators": sorted({item.request.requested_by for item in items}),
                            "window": limits.window_s,
                            "per_operator": limits.per_operator,
                            "per_vehicle": limits.per_vehicle,
                        },
                    )
                cars = conn.cursor(row_factory=dict_row)
                await cars.execute(_CARS, {"vins": vins, "active": _ACTIVE})
                existing = {
                    (row["requested_by"], row["idempotency_key"]): CommandRecord(**row)
                    for row in (await replayed.fetchall() if keyed else [])
                }
                counted = {
                    (kind, value): (n, free_in)
                    for kind, value, n, free_in in (
                        await counts.fetchall() if limits is not None else []
                    )
                }
                vehicles = {row["vin"]: row for row in await cars.fetchall()}
                for i, item in enumerate(items):
                    try:
                        outcomes[i] = await self._decide(
                            conn,
                            item,
                            existing=existing,
                            counted=counted,
                            vehicles=vehicles,
                            busy_policy=busy_policy,
                            max_queued=max_queued,
                        )
                    except CommandRefusedError as exc:
                        outcomes[i] = exc
                    if outcomes[i] is None:
                        new.append(i)
                        # Later requests of the batch count this one against the operator.
                        by = ("requested_by", item.request.requested_by)
                        n, free_in = counted.get(by, (0, None))
                        counted[by] = (n + 1, free_in)
                inserted = conn.cursor(row_factory=dict_row)
                if new:
                    await inserted.execute(_INSERT_COMMANDS, _insert_parameters(items, new))
            # The transaction's end synchronised the pipeline: the inserts' rows are here.
            rows = {row.pop("vin"): row for row in (await inserted.fetchall() if new else [])}
        for i in new:
            outcomes[i] = await self._inserted(items[i].request, rows.get(items[i].request.vin))
        return [outcome for outcome in outcomes if outcome is not None]

    async def _inserted(
        self, request: NewCommand, row: dict[str, Any] | None
    ) -> tuple[CommandRecord, bool] | CommandRefusedError:
        """The command the batch inserted for `request`, or (no row: the same key, committed
        by a concurrent request meanwhile) the one that request made."""
        if row is not None:
            row.pop("notified")
            return CommandRecord(vin=request.vin, **row), True
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await self._by_key_query(cur, request)
            try:
                found = await self._by_key_result(cur, request)
            except CommandRefusedError as exc:
                return exc
        assert found is not None
        return found, False

    @staticmethod
    async def _decide(
        conn: psycopg.AsyncConnection[Any],
        item: CreateRequest,
        *,
        existing: Mapping[tuple[str, str | None], CommandRecord],
        counted: Mapping[tuple[str, str], tuple[int, float | None]],
        vehicles: Mapping[str, dict[str, Any]],
        busy_policy: str,
        max_queued: int,
    ) -> tuple[CommandRecord, bool] | None:
        """The command a replayed key made, None for a new command to insert, or a refusal
        (raised), checked in the order `create` documents."""
        request = item.request
        if request.idempotency_key is not None:
            found = existing.get((request.requested_by, request.idempotency_key))
            if found is not None:
                _check_same_request(found, request)
                return found, False
        if item.limits is not None:
            operator = ("requested_by", request.requested_by)
            by_operator, operator_free_in = counted.get(operator, (0, None))
            await _check_rate(
                conn,
                request,
                item.limits,
                by_operator=by_operator,
                operator_free_in=operator_free_in,
                by_vehicle=counted.get(("vin", request.vin), (0, None))[0],
            )
        vehicle = vehicles.get(request.vin)
        _check_capable(request, vehicle)
        assert vehicle is not None
        _check_not_busy(request.vin, vehicle["active"], busy_policy, max_queued)
        return None

    async def _by_key_query(
        self, cur: psycopg.AsyncCursor[dict[str, Any]], request: NewCommand
    ) -> None:
        await cur.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands c "  # noqa: S608  # constant columns
            "WHERE c.requested_by = %s AND c.idempotency_key = %s",
            (request.requested_by, request.idempotency_key),
        )

    async def _by_key_result(
        self, cur: psycopg.AsyncCursor[dict[str, Any]], request: NewCommand
    ) -> CommandRecord | None:
        row = await cur.fetchone()
        if row is None:
            return None
        record = CommandRecord(**row)
        _check_same_request(record, request)
        return record

    async def get(self, command_id: UUID) -> CommandRecord | None:
        """One command with its transitions, read in one statement (one snapshot), so the
        history and the current state always agree."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_GET_COMMAND, (command_id,))
            row = await cur.fetchone()
        if row is None:
            return None
        transitions = [Transition(**t) for t in row.pop("transitions")]
        return CommandRecord(**row, transitions=transitions)

    async def list_for_vehicle(self, vin: str, *, limit: int, cursor: str | None) -> CommandPage:
        after = _decode_cursor(cursor) if cursor else None
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if after is None:
                await cur.execute(
                    f"SELECT {_COMMAND_COLUMNS} FROM commands c WHERE c.vin = %s "  # noqa: S608  # constant columns
                    "ORDER BY c.created_at DESC, c.id DESC LIMIT %s",
                    (vin, limit + 1),
                )
            else:
                await cur.execute(
                    f"SELECT {_COMMAND_COLUMNS} FROM commands c WHERE c.vin = %s "  # noqa: S608  # constant columns
                    "AND (c.created_at, c.id) < (%s, %s) "
                    "ORDER BY c.created_at DESC, c.id DESC LIMIT %s",
                    (vin, after[0], after[1], limit + 1),
                )
            rows = await cur.fetchall()
        items = [CommandRecord(**row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = _encode_cursor(last.created_at, last.command_id)
        return CommandPage(items=items, next_cursor=next_cursor)

    async def latest_state(self, vin: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the car is known, its latest state row or None)."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT v.vin AS known, s.* FROM vehicles v "
                "LEFT JOIN latest_state s ON s.vin = v.vin WHERE v.vin = %s",
                (vin,),
            )
            row = await cur.fetchone()
        if row is None:
            return False, None
        return True, (row if row.get("time") is not None else None)

    async def vehicle_exists(self, vin: str) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT 1 FROM vehicles WHERE vin = %s", (vin,))
            return await cur.fetchone() is not None

    # --- dispatch ----------------------------------------------------------------------------

    async def dispatchable(self, limit: int) -> list[str]:
        """Cars with a queued command and none in flight, oldest waiting first."""
        async with self._connection() as conn:
            cur = await conn.execute(
                """
                SELECT q.vin FROM commands q
                WHERE q.status = 'queued'
                  AND NOT EXISTS (SELECT 1 FROM commands f
                                  WHERE f.vin = q.vin AND f.status = ANY(%s))
                GROUP BY q.vin ORDER BY min(q.created_at) LIMIT %s
                """,
                (_IN_FLIGHT, limit),
            )
            return [row[0] for row in await cur.fetchall()]

    async def queued_among(self, vins: Sequence[str]) -> set[str]:
        """Which of the cars have a command waiting (one statement; `dispatch` decides)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT vin FROM commands WHERE vin = ANY(%s) AND status = 'queued'",
                (list(vins),),
            )
            return {row[0] for row in await cur.fetchall()}

    async def dispatch(
        self, key_ids: Mapping[str, str], sign: Sign, publish: Publish
    ) -> dict[str, Dispatched]:
        """Send each car's oldest queued command, if it has none in flight.

        Args:
            key_ids: the cars, each with the id of the key that will sign its command.
            sign: signs a claimed command with that key.
            publish: publishes it and returns the PUBACK's reason code.

        In one transaction (see `_TRY_DISPATCH_LOCKS`): take the cars' dispatch locks, claim
        their oldest queued commands, publish them, and once the broker acknowledged them
        record them `sent` and commit (so `sent` is never visible before the PUBACK). A car
        the broker has no session for keeps its command queued; a command the broker refuses
        is `failed`; a publish that fails leaves it queued (`error` says why). A queued
        command with under a second left is never sent; the sweeper expires it.
        """
        outcomes: dict[str, Dispatched] = {}
        async with self._pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                locks = conn.cursor()
                await locks.execute(_TRY_DISPATCH_LOCKS, (_DISPATCH_LOCK, list(key_ids)))
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(_CLAIM, {"in_flight": _IN_FLIGHT})
                claims = [
                    ClaimedCommand(
                        command_id=row["id"],
                        vin=row["vin"],
                        action=CommandAction(row["action"]),
                        issued_at_ms=row["issued_ms"],
                        expires_at_ms=row["expires_ms"],
                        seconds_left=row["left_s"],
                        nonce=row["nonce"],
                    )
                    for row in await cur.fetchall()
                ]
                locked_row = await locks.fetchone()
                locked = set((locked_row[0] if locked_row else "").split(",")) - {""}
                for vin in key_ids:
                    outcomes[vin] = Dispatched(
                        DispatchOutcome.NOTHING if vin in locked else DispatchOutcome.LOCKED
                    )
                if not claims:
                    return outcomes
                codes = await asyncio.gather(
                    *(self._sign_and_publish(claimed, sign, publish) for claimed in claims),
                    return_exceptions=True,
                )
                await self._record_dispatch(conn, claims, codes, key_ids, outcomes)
            # Committed: `sent` (and `failed`) are visible, their NOTIFYs on their way.
            for dispatched in outcomes.values():
                dispatched.events = [_event(row) for row in dispatched.rows]
                dispatched.rows = []
        return outcomes

    @staticmethod
    async def _sign_and_publish(claimed: ClaimedCommand, sign: Sign, publish: Publish) -> int:
        return await publish(claimed, sign(claimed))

    async def _record_dispatch(
        self,
        conn: psycopg.AsyncConnection[Any],
        claims: list[ClaimedCommand],
        codes: list[int | BaseException],
        key_ids: Mapping[str, str],
        outcomes: dict[str, Dispatched],
    ) -> None:
        """What the broker did with each claimed command, in the dispatch transaction."""
        sent: list[ClaimedCommand] = []
        absent: list[ClaimedCommand] = []
        refused: list[tuple[ClaimedCommand, int]] = []
        for claimed, code in zip(claims, codes, strict=True):
            if isinstance(code, BaseException):
                if not isinstance(code, GatewayError):
                    raise code  # cancelled, or a bug: the transaction rolls back
                outcomes[claimed.vin] = Dispatched(DispatchOutcome.ERROR, error=code)
            elif code == 0x10:  # no matching subscribers: the car has no session
                absent.append(claimed)
                outcomes[claimed.vin] = Dispatched(DispatchOutcome.NO_SUBSCRIBER)
            elif code >= 0x80:
                refused.append((claimed, code))
            else:
                sent.append(claimed)
        cursors: list[psycopg.AsyncCursor[dict[str, Any]]] = []
        if sent:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                _RECORD_SENT,
                {
                    "to": Status.SENT.value,
                    "ids": [c.command_id for c in sent],
                    "key_ids": [key_ids[c.vin] for c in sent],
                    "actor": GATEWAY_ACTOR,
                    "transition_detail": None,
                },
            )
            cursors.append(cur)
        if absent:
            await conn.execute(_NO_SUBSCRIBER, ([c.command_id for c in absent],))
        for claimed, code in refused:
            cur = conn.cursor(row_factory=dict_row)
            await self._move_one(
                cur,
                Status.FAILED,
                claimed.command_id,
                vin=claimed.vin,
                sources=[Status.QUEUED],
                reason=GatewayReason.BROKER_REFUSED,
                detail=f"the broker refused the command (reason code 0x{code:02x}): "
                "check that the gateway's account may write tgw/v1/vehicles/+/commands",
                fetch=False,
            )
            outcomes[claimed.vin] = Dispatched(DispatchOutcome.REFUSED)
            cursors.append(cur)
        for cur in cursors:  # synchronises the pipeline (COMMIT follows as the block ends)
            for row in await cur.fetchall():
                if row["status"] == Status.SENT.value:
                    outcomes[row["vin"]] = Dispatched(DispatchOutcome.SENT)
                outcomes[row["vin"]].rows.append(row)

    async def _move_one(
        self,
        cur: psycopg.AsyncCursor[dict[str, Any]],
        to: Status,
        command_id: UUID,
        *,
        vin: str | None = None,
        sources: list[Status] | None = None,
        actor: str = GATEWAY_ACTOR,
        key_id: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        car_at: datetime | None = None,
        preconditions: list[str] | None = None,
        state: dict[str, Any] | None = None,
        transition_detail: dict[str, Any] | None = None,
        fetch: bool = True,
    ) -> list[CommandEvent]:
        """Move one command (the statement only, without `fetch`: in a pipeline, the rows
        are read once it is synchronised)."""
        await cur.execute(
            _MOVE_ONE[to],
            {
                "to": to.value,
                "id": command_id,
                "vin": vin,
                "from": [s.value for s in sources or []],
                "actor": actor,
                "key_id": key_id,
                "reason": reason,
                "detail": detail,
                "car_at": car_at,
                "preconditions": preconditions or [],
                "state": Jsonb(state) if state is not None else None,
                "transition_detail": Jsonb(transition_detail) if transition_detail else None,
            },
        )
        return [_event(row) for row in await cur.fetchall()] if fetch else []

    # --- results from cars -------------------------------------------------------------------

    async def apply_result(self, result: CommandResultMessage) -> ResultApplied:
        """Apply one validated result; unknown commands and foreign VINs are not applied."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # The usual case: one statement (its own transaction) moves the command on.
            events = await self._apply(cur, result)
            if events:
                return ResultApplied(ResultEffect.APPLY, event=events[0])
            # Why not? Mostly an answer another worker's later one overtook, or a redelivery:
            # a plain read tells, and nothing is written. What must be written (or applied
            # after all) is looked at again with the row locked.
            await cur.execute(_STATUS_OF, ([result.command_id],))
            told = _not_applied_without_writing(result, await cur.fetchone())
            if told is not None:
                return told
            async with conn.transaction():
                return await self._not_applied(cur, result)

    async def apply_results(self, results: Sequence[CommandResultMessage]) -> list[ResultApplied]:
        """Apply validated results, in order: many in one transaction and one statement per
        round (a command's first results, then its second ones, ...), so one commit and a few
        statements serve a whole batch; a command's own results keep their order. What did not
        apply (unknown, duplicate, late, a race with the dispatch) is then looked at one by
        one, as `apply_result` does."""
        if len(results) == 1:
            return [await self.apply_result(results[0])]
        rounds: list[list[int]] = []
        seen: dict[UUID, int] = {}
        for i, result in enumerate(results):
            nth = seen.get(result.command_id, 0)
            seen[result.command_id] = nth + 1
            if nth == len(rounds):
                rounds.append([])
            rounds[nth].append(i)
        applied: list[ResultApplied | None] = [None] * len(results)
        async with self._pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                await conn.execute(_LOCK_COMMANDS, (sorted(seen),))
                cursors = []
                for members in rounds:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(_APPLY_RESULTS, _results_parameters(results, members))
                    cursors.append((members, cur))
                # Where each command ended up: why a result did not apply, without asking again.
                statuses = conn.cursor(row_factory=dict_row)
                await statuses.execute(_STATUS_OF, (sorted(seen),))
            # The transaction's end synchronised the pipeline: every statement's rows are here.
            for members, cur in cursors:
                moved = {row["command_id"]: row for row in await cur.fetchall()}
                for i in members:
                    row = moved.get(results[i].command_id)
                    if row is not None:
                        applied[i] = ResultApplied(ResultEffect.APPLY, event=_event(row))
            now = {row["id"]: row for row in await statuses.fetchall()}
        for i, result in enumerate(results):
            if applied[i] is None:
                applied[i] = _not_applied_without_writing(result, now.get(result.command_id))
            if applied[i] is None:  # late, conflicting, or applicable after all: on its own
                applied[i] = await self.apply_result(result)
        return [a for a in applied if a is not None]

    async def _not_applied(
        self, cur: psycopg.AsyncCursor[dict[str, Any]], result: CommandResultMessage
    ) -> ResultApplied:
        """Why a result did not apply (in a transaction, with the row locked meanwhile)."""
        await cur.execute(
            "SELECT vin, status FROM commands WHERE id = %s FOR UPDATE", (result.command_id,)
        )
        row = await cur.fetchone()
        told = _not_applied_without_writing(result, row)
        if told is not None:
            return told
        assert row is not None
        effect = effect_of_result(Status(row["status"]), result.outcome)
        if effect is ResultEffect.APPLY:  # it moved between the two statements
            events = await self._apply(cur, result)
            return ResultApplied(effect, event=events[0] if events else None)
        if effect in (ResultEffect.LATE, ResultEffect.CONFLICT):
            await cur.execute(
                """
                WITH late AS (
                    UPDATE commands SET late_outcome = %(outcome)s, late_outcome_at = now()
                    WHERE id = %(id)s RETURNING requested_by, vin, status
                )
                INSERT INTO audit_log (actor, action, target, detail)
                SELECT requested_by, 'command.late_result', vin, jsonb_build_object(
                    'command_id', %(id)s::uuid, 'status', status, 'outcome', %(outcome)s::text,
                    'reason', %(reason)s::text, 'effect', %(effect)s::text)
                FROM late
                """,
                {
                    "id": result.command_id,
                    "outcome": result.outcome.value,
                    "reason": result.reason.value if result.reason else None,
                    "effect": effect.value,
                },
            )
        return ResultApplied(effect)

    async def _apply(
        self,
        cur: psycopg.AsyncCursor[dict[str, Any]],
        result: CommandResultMessage,
        *,
        fetch: bool = True,
    ) -> list[CommandEvent]:
        written = _ResultWrites.of(result)
        return await self._move_one(
            cur,
            written.target,
            result.command_id,
            vin=result.vin,
            sources=written.sources,
            actor=f"car:{result.vin}",
            reason=written.reason,
            detail=result.detail,
            car_at=written.car_at,
            preconditions=written.preconditions,
            state=written.state,
            transition_detail=written.transition_detail,
            fetch=fetch,
        )

    async def dead_letter(
        self,
        *,
        received_at: datetime,
        topic: str,
        vin: str | None,
        reason: str,
        detail: str,
        payload: bytes,
        max_payload_bytes: int,
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO dead_letters "
                "(received_at, topic, vin, reason, detail, payload, payload_size) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    received_at,
                    topic,
                    vin,
                    reason,
                    detail.replace("\x00", "\\x00"),
                    payload[:max_payload_bytes],
                    len(payload),
                ),
            )

    # --- sweeping ------------------------------------------------------------------------------

    async def sweep(
        self, *, grace_s: float, answer_timeout_s: float, verify_window_s: float
    ) -> list[CommandEvent]:
        """Resolve overdue commands (expired, timed out) and verify executed ones."""
        events: list[CommandEvent] = []
        params = {
            "actor": GATEWAY_ACTOR,
            "transition_detail": None,
            "grace_s": grace_s,
            "timeout_s": answer_timeout_s,
            "window_s": verify_window_s,
        }
        statements = (
            (_EXPIRE_QUEUED, Status.EXPIRED),
            (_EXPIRE_SENT, Status.EXPIRED),
            (_TIME_OUT, Status.TIMED_OUT),
            (_VERIFY, Status.VERIFIED),
        )
        async with self._connection() as conn:
            # Pipelined: the statements in one round trip (the sweeper runs twice a second in
            # every gateway process, commands or not).
            async with conn.pipeline():
                await conn.execute(_FORGET_RATE_COUNTS, (_RATE_COUNTS_KEPT_S,))
                cursors = []
                for statement, to in statements:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(statement, {**params, "to": to.value})
                    cursors.append(cur)
            for cur in cursors:
                events += [_event(row) for row in await cur.fetchall()]
        return events


async def _check_rate(
    conn: psycopg.AsyncConnection[Any],
    request: NewCommand,
    limits: RateLimits,
    *,
    by_operator: int,
    operator_free_in: float | None,
    by_vehicle: int,
) -> None:
    """Refuse (429) a command over its operator's or its car's limit, saying when to retry."""
    window = limits.window_s
    if limits.per_operator and by_operator >= limits.per_operator:
        why = (
            f"operator {request.requested_by!r} sent {by_operator} commands in the "
            f"last {window} s (limit {limits.per_operator})"
        )
        free_in = operator_free_in  # when its oldest second of the window leaves it
    elif limits.per_vehicle and by_vehicle >= limits.per_vehicle:
        why = (
            f"car {request.vin} got {by_vehicle} commands in the last {window} s "
            f"(limit {limits.per_vehicle})"
        )
        cur = await conn.execute(
            _FREE_IN, {"vin": request.vin, "window": window, "limit": limits.per_vehicle}
        )
        row = await cur.fetchone()
        free_in = row[0] if row is not None else None
    else:
        return
    retry = max(1, math.ceil(float(free_in))) if free_in is not None else window
    raise CommandRefusedError(
        f"{why}: try again in {retry} s; limits are commands.rate_limit_* in the settings",
        status=429,
        kind="rate-limited",
        retry_after_s=retry,
    )


def _not_applied_without_writing(
    result: CommandResultMessage, row: Mapping[str, Any] | None
) -> ResultApplied | None:
    """Why `result` did not apply to its command (`row`: its vin and status), when that needs
    no write: no such command, another car's, a redelivery, or overtaken by a later answer.
    None: it is late or conflicting (recorded), or applies after all."""
    if row is None:
        return ResultApplied(
            None,
            "unknown_command",
            f"no command {result.command_id} was ever sent: result not applied",
        )
    if row["vin"] != result.vin:
        return ResultApplied(
            None,
            "vin_mismatch",
            f"command {result.command_id} is for {row['vin']}, "
            f"but {result.vin} answered it: result not applied",
        )
    effect = effect_of_result(Status(row["status"]), result.outcome)
    if effect in (ResultEffect.DUPLICATE, ResultEffect.STALE):
        return ResultApplied(effect)
    return None


def _check_same_request(record: CommandRecord, request: NewCommand) -> None:
    """A key names one request: the same key for another car or action is refused."""
    if record.vin != request.vin or record.action != request.action:
        raise CommandRefusedError(
            f"idempotency key {request.idempotency_key!r} was used for another request "
            f"({record.action} on {record.vin}, command {record.command_id}): "
            "use a new key for a new command",
            status=409,
            kind="idempotency-key-reused",
        )


def _insert_parameters(items: Sequence[CreateRequest], new: Sequence[int]) -> dict[str, list[Any]]:
    """`_INSERT_COMMANDS`'s columns for `items[i]`, i in `new`."""
    requests = [items[i].request for i in new]
    return {
        "vins": [r.vin for r in requests],
        "actions": [r.action.value for r in requests],
        "requesters": [r.requested_by for r in requests],
        "keys": [r.idempotency_key for r in requests],
        "ttls": [items[i].ttl_s for i in new],
        "nonces": [secrets.token_hex(16) for _ in new],
    }


def _check_capable(request: NewCommand, vehicle: dict[str, Any] | None) -> None:
    if vehicle is None:
        raise CommandRefusedError(
            f"vehicle {request.vin} is unknown: it has never connected and is not registered",
            status=404,
            kind="unknown-vehicle",
        )
    capabilities = list(vehicle["capabilities"] or [])
    if not capabilities:
        raise CommandRefusedError(
            f"vehicle {request.vin} has not reported what it can do (no birth message with "
            "capabilities yet): wait until it has connected once",
            status=409,
            kind="capabilities-unknown",
        )
    if request.action.value not in capabilities:
        raise CommandRefusedError(
            f"vehicle {request.vin} cannot do {request.action.value}; "
            f"it reports: {', '.join(sorted(capabilities))}",
            status=409,
            kind="unsupported-action",
        )


def _check_not_busy(vin: str, active: int, busy_policy: str, max_queued: int) -> None:
    if busy_policy == "refuse" and active > 0:
        raise CommandRefusedError(
            f"vehicle {vin} is busy with another command: try again when it has finished",
            status=409,
            kind="vehicle-busy",
        )
    if active >= max_queued:
        raise CommandRefusedError(
            f"vehicle {vin} already has {active} commands waiting or in flight "
            f"(limit {max_queued}): wait for them to finish",
            status=409,
            kind="vehicle-busy",
        )


@dataclass(frozen=True, slots=True)
class _ResultWrites:
    """What a car's result writes to its command (`_MOVE_ONE` for one, `_APPLY_RESULTS` for
    a batch): the state it moves to, from which states, and the columns it sets."""

    target: Status
    sources: list[Status]
    car_at: datetime
    reason: str | None
    preconditions: list[str]
    state: dict[str, Any] | None
    transition_detail: dict[str, Any]

    @classmethod
    def of(cls, result: CommandResultMessage) -> _ResultWrites:
        reason = result.reason.value if result.reason else None
        state = result.state.present() if result.state is not None else None
        return cls(
            target=target_status(result.outcome),
            sources=sorted(allowed_sources(result.outcome)),
            car_at=ms_to_datetime(result.ts),
            reason=reason,
            preconditions=[p.value for p in result.failed_preconditions],
            state=dict(state) if state else None,
            transition_detail={"car_ts": result.ts} | ({"reason": reason} if reason else {}),
        )


def _results_parameters(
    results: Sequence[CommandResultMessage], members: Sequence[int]
) -> dict[str, list[Any]]:
    """`_APPLY_RESULTS`'s columns for `results[i]`, i in `members` (JSON as text: an array of
    only NULLs has no type psycopg could send)."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "ids", "vins", "targets", "sources", "car_ats", "reasons", "details",
            "preconditions", "states", "transition_details",
        )
    }  # fmt: skip
    for i in members:
        result = results[i]
        written = _ResultWrites.of(result)
        columns["ids"].append(result.command_id)
        columns["vins"].append(result.vin)
        columns["targets"].append(written.target.value)
        columns["sources"].append(",".join(written.sources))
        columns["car_ats"].append(written.car_at)
        columns["reasons"].append(written.reason)
        columns["details"].append(result.detail)
        columns["preconditions"].append(json.dumps(written.preconditions))
        columns["states"].append(json.dumps(written.state) if written.state else None)
        columns["transition_details"].append(json.dumps(written.transition_detail))
    return columns
