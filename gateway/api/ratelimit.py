"""Rate limits on sending commands: per operator (token) and per car, in a sliding window.

Counted from the `commands` table itself, so every gateway instance enforces the same limits
without shared memory, and a restart forgets nothing. A request that repeats an idempotency
key the operator used before is never limited: it creates nothing (it returns the command it
created then). Concurrent requests may each see the last free slot, so a burst can exceed a
limit by the number of requests in flight at that instant; a careless or compromised operator
is still held to the limit's order of magnitude.

Over the limit: `429 Too Many Requests`, problem type `rate-limited`, with `Retry-After`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from gateway.api.problems import Problem
from gateway.config import CommandSettings
from gateway.errors import StorageError

__all__ = ["CommandRateLimiter"]

# One statement, in autocommit (one round trip): whether the idempotency key was used before
# (a replay creates nothing and is never limited), and each count up to its limit only, so a
# check costs at most `limit` index entries whatever the traffic (a 0 limit counts nothing).
_CHECK = """
SELECT
    %(key)s::text IS NOT NULL AND EXISTS (
        SELECT 1 FROM commands WHERE requested_by = %(operator)s AND idempotency_key = %(key)s),
    (SELECT count(*) FROM (
        SELECT 1 FROM commands
        WHERE requested_by = %(operator)s AND created_at > now() - %(window)s::interval
        LIMIT %(per_operator)s) o),
    (SELECT count(*) FROM (
        SELECT 1 FROM commands
        WHERE vin = %(vin)s AND created_at > now() - %(window)s::interval
        LIMIT %(per_vehicle)s) v)
"""
# Only when refusing: when the oldest command that counts leaves the window (Retry-After).
_FREE_IN = """
SELECT extract(epoch FROM min(created_at) + %(window)s::interval - now()) FROM (
    SELECT created_at FROM commands
    WHERE {column} = %(value)s AND created_at > now() - %(window)s::interval
    ORDER BY created_at DESC LIMIT %(limit)s) newest
"""


class CommandRateLimiter:
    """Refuses a new command when its operator or its car is over the configured rate.

    Args:
        pool: the gateway's database pool.
        settings: `commands.rate_limit_*` (0 turns a limit off).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], settings: CommandSettings) -> None:
        self._pool = pool
        self._per_operator = settings.rate_limit_per_operator
        self._per_vehicle = settings.rate_limit_per_vehicle
        self._window_s = settings.rate_limit_window_s

    async def check(self, operator: str, vin: str, idempotency_key: str | None) -> None:
        """Return if the command may be created; raise a 429 `Problem` otherwise."""
        if not self._per_operator and not self._per_vehicle:
            return
        window = f"{self._window_s} seconds"
        try:
            async with self._autocommit() as conn:
                cur = await conn.execute(
                    _CHECK,
                    {
                        "key": idempotency_key,
                        "operator": operator,
                        "vin": vin,
                        "window": window,
                        "per_operator": self._per_operator,
                        "per_vehicle": self._per_vehicle,
                    },
                )
                row = await cur.fetchone()
                assert row is not None
                replay, by_operator, by_vehicle = row
                if replay:
                    return  # a replay creates nothing
                if self._per_operator and by_operator >= self._per_operator:
                    why = (
                        f"operator {operator!r} sent {by_operator} commands in the last "
                        f"{self._window_s} s (limit {self._per_operator})"
                    )
                    free_in = await self._free_in(conn, "requested_by", operator, window)
                    self._refuse(why, free_in)
                if self._per_vehicle and by_vehicle >= self._per_vehicle:
                    why = (
                        f"car {vin} got {by_vehicle} commands in the last {self._window_s} s "
                        f"(limit {self._per_vehicle})"
                    )
                    free_in = await self._free_in(conn, "vin", vin, window)
                    self._refuse(why, free_in)
        except psycopg.Error as exc:
            raise StorageError(f"cannot count recent commands: {exc}") from exc

    async def _free_in(
        self, conn: psycopg.AsyncConnection[Any], column: str, value: str, window: str
    ) -> Any:
        limit = self._per_operator if column == "requested_by" else self._per_vehicle
        query = sql.SQL(_FREE_IN).format(column=sql.Identifier(column))
        cur = await conn.execute(query, {"value": value, "window": window, "limit": limit})
        row = await cur.fetchone()
        return None if row is None else row[0]

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in autocommit: a lone statement costs one round trip."""
        async with self._pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    await conn.set_autocommit(False)  # back as the pool lends it
                else:
                    await conn.close()  # cannot be reset: never lent again

    def _refuse(self, why: str, free_in_s: Any) -> None:
        retry = max(1, math.ceil(float(free_in_s))) if free_in_s is not None else self._window_s
        raise Problem(
            429,
            "rate-limited",
            f"{why}: try again in {retry} s; limits are commands.rate_limit_* in the settings",
            headers={"Retry-After": str(retry)},
        )
