"""Periodic upkeep beside ingest: stale cars, and partitions ahead (plain PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.storage import ensure_partitions

__all__ = ["last_seen_resolution_s", "mark_stale_vehicles", "run_maintenance"]

log = structlog.get_logger(__name__)

_PARTITION_EVERY_S = 3600.0

# Online by its last birth, yet silent for too long: probably in a dead zone with a
# session the broker has not yet declared lost.
_MARK_STALE = """
UPDATE vehicles SET stale = true
WHERE online AND NOT stale AND last_seen_at < now() - make_interval(secs => %s)
"""


def last_seen_resolution_s(stale_after_s: float) -> float:
    """How stale `vehicles.last_seen_at` may be: ingest rewrites it at most this often per car.

    A tenth of the stale interval, at most 30 s: one `vehicles` update per car per 30 s
    instead of one per batch, and stale marking late by at most this much.
    """
    return min(stale_after_s / 10, 30.0)


async def mark_stale_vehicles(
    pool: AsyncConnectionPool[Any], stale_after_s: float, last_seen_resolution_s: float = 0.0
) -> int:
    """Mark online cars silent for longer than `stale_after_s` as stale; return how many.

    `last_seen_at` may lag the car's last message by up to `last_seen_resolution_s`
    (see `BatchWriter`), so only cars silent by the database's account for longer than both
    together are marked: never a car that spoke within `stale_after_s`.
    """
    async with pool.connection() as conn:
        cursor = await conn.execute(_MARK_STALE, (stale_after_s + last_seen_resolution_s,))
        affected: int = cursor.rowcount
        return max(affected, 0)


async def run_maintenance(
    pool: AsyncConnectionPool[Any], stale_after_s: float, last_seen_resolution_s: float = 0.0
) -> None:
    """Run upkeep until cancelled; a database outage only delays it."""
    check_every_s = max(1.0, min(stale_after_s / 4, 30.0))
    since_partitions = _PARTITION_EVERY_S
    while True:
        try:
            marked = await mark_stale_vehicles(pool, stale_after_s, last_seen_resolution_s)
            if marked:
                log.info("connectivity.stale", vehicles=marked)
            if since_partitions >= _PARTITION_EVERY_S:
                async with pool.connection() as conn:
                    await ensure_partitions(conn)
                since_partitions = 0.0
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("maintenance.database_unavailable", error=str(exc))
        await asyncio.sleep(check_every_s)
        since_partitions += check_every_s
