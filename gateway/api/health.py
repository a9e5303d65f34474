"""What `/health` reports: broker, database and how far behind ingest is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = ["HealthProbe", "HealthReport", "IngestProgress"]

_DATABASE_TIMEOUT_S = 2.0


class IngestProgress(Protocol):
    """What the ingest side exposes about itself."""

    @property
    def broker_connected(self) -> bool: ...

    @property
    def pending_messages(self) -> int: ...

    @property
    def oldest_pending_age_s(self) -> float | None: ...

    @property
    def last_commit_age_s(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class HealthReport:
    healthy: bool
    broker_connected: bool
    database_reachable: bool
    database_error: str | None
    pending_messages: int
    oldest_pending_age_s: float | None
    last_commit_age_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "degraded",
            "broker": {"connected": self.broker_connected},
            "database": {"reachable": self.database_reachable, "error": self.database_error},
            "ingest": {
                "pending_messages": self.pending_messages,
                "oldest_pending_age_s": self.oldest_pending_age_s,
                "last_commit_age_s": self.last_commit_age_s,
            },
        }


class HealthProbe:
    """Answers health questions from the live pipeline and a quick database round trip."""

    def __init__(self, pool: AsyncConnectionPool[Any], ingest: IngestProgress) -> None:
        self._pool = pool
        self._ingest = ingest

    async def report(self) -> HealthReport:
        started = time.monotonic()
        error: str | None = None
        try:
            async with asyncio.timeout(_DATABASE_TIMEOUT_S):
                async with self._pool.connection(timeout=_DATABASE_TIMEOUT_S) as conn:
                    await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            error = str(exc) or f"no answer within {time.monotonic() - started:.1f} s"
        ingest = self._ingest
        reachable = error is None
        return HealthReport(
            healthy=reachable and ingest.broker_connected,
            broker_connected=ingest.broker_connected,
            database_reachable=reachable,
            database_error=error,
            pending_messages=ingest.pending_messages,
            oldest_pending_age_s=ingest.oldest_pending_age_s,
            last_commit_age_s=ingest.last_commit_age_s,
        )
