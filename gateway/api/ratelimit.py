"""Rate limits on sending commands: per operator (token) and per car, in a sliding window.

Counted in the database, in the transaction that creates the command (after the car's lock,
so the per-car limit is exact; `CommandStore.create_many`), so every gateway instance enforces
the same limits without shared memory, and a restart forgets nothing. Per car: its commands of
the window, the count stopping at the limit (at most that many index entries). Per operator:
`command_rate_counts`, new commands per operator and second, written with each batch of new
commands, so a check reads at most one row per second of the window (and session) however high
the limit is raised for a booking backend; the window is counted in whole seconds. A request
that repeats an idempotency key the operator used before is never limited: it creates nothing
(it returns the command it created then). Concurrent requests of one operator to different cars
may each see the last free slot, so a burst can exceed the per-operator limit by the number of
requests in flight at that instant; a careless or compromised operator is still held to the
limit's order of magnitude.

Over the limit: `429 Too Many Requests`, problem type `rate-limited`, with `Retry-After`.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.commands import RateLimits
from gateway.config import CommandSettings

__all__ = ["CommandRateLimiter"]


class CommandRateLimiter:
    """The API's rate-limit policy for new commands (`commands.rate_limit_*`).

    Args:
        pool: the gateway's database pool (kept for the wiring; the counting happens in the
            command's own transaction).
        settings: `commands.rate_limit_*` (0 turns a limit off).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], settings: CommandSettings) -> None:
        self._pool = pool
        self._limits: RateLimits | None = None
        if settings.rate_limit_per_operator or settings.rate_limit_per_vehicle:
            self._limits = RateLimits(
                per_operator=settings.rate_limit_per_operator,
                per_vehicle=settings.rate_limit_per_vehicle,
                window_s=settings.rate_limit_window_s,
            )

    @property
    def limits(self) -> RateLimits | None:
        """The limits a new command is held to; None when both are off."""
        return self._limits
