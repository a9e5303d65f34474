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

import math
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.api.problems import Problem
from gateway.config import CommandSettings
from gateway.errors import StorageError

__all__ = ["CommandRateLimiter"]

_COUNT = """
SELECT
    count(*) FILTER (WHERE requested_by = %(operator)s),
    count(*) FILTER (WHERE vin = %(vin)s),
    extract(epoch FROM min(created_at) FILTER (WHERE requested_by = %(operator)s)
                       + %(window)s::interval - now()),
    extract(epoch FROM min(created_at) FILTER (WHERE vin = %(vin)s)
                       + %(window)s::interval - now())
FROM commands
WHERE created_at > now() - %(window)s::interval
  AND (requested_by = %(operator)s OR vin = %(vin)s)
"""
_KEY_USED = "SELECT 1 FROM commands WHERE requested_by = %s AND idempotency_key = %s"


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
            async with self._pool.connection() as conn:
                if idempotency_key is not None:
                    cur = await conn.execute(_KEY_USED, (operator, idempotency_key))
                    if await cur.fetchone() is not None:
                        return  # a replay creates nothing
                cur = await conn.execute(
                    _COUNT, {"operator": operator, "vin": vin, "window": window}
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StorageError(f"cannot count recent commands: {exc}") from exc
        assert row is not None
        by_operator, by_vehicle, operator_free_in, vehicle_free_in = row
        if self._per_operator and by_operator >= self._per_operator:
            self._refuse(
                f"operator {operator!r} sent {by_operator} commands in the last "
                f"{self._window_s} s (limit {self._per_operator})",
                operator_free_in,
            )
        if self._per_vehicle and by_vehicle >= self._per_vehicle:
            self._refuse(
                f"car {vin} got {by_vehicle} commands in the last {self._window_s} s "
                f"(limit {self._per_vehicle})",
                vehicle_free_in,
            )

    def _refuse(self, why: str, free_in_s: Any) -> None:
        retry = max(1, math.ceil(float(free_in_s))) if free_in_s is not None else self._window_s
        raise Problem(
            429,
            "rate-limited",
            f"{why}: try again in {retry} s; limits are commands.rate_limit_* in the settings",
            headers={"Retry-After": str(retry)},
        )
