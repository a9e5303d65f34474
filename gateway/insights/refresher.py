"""Keeps `trips` and `utilisation_hourly` up to date: one task per gateway (docs/insights.md).

Every `interval_s` the refresher, in one transaction:

1. finds the cars with telemetry received since the last refresh (less an overlap that covers
   batches committed a little after they were received and clock differences between gateway
   hosts), and for each the earliest new sample;
2. continues each such car's open trip with its new samples, or, when that is not enough (late
   data, no open trip), re-derives the car's trips from its anchor (see `gateway.insights.trips`);
3. rebuilds utilisation rows from the hour each car last changed;
4. records the database time it ran at.

Any number of gateways may run it: a transaction-scoped advisory lock lets one refresh at a
time and the others skip their turn. The first refresh on a database derives everything from
scratch, a batch of cars per transaction (a rebuild); `tgw insights rebuild` does the same on
demand, e.g. after data came in later than the overlap allows for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString, cast

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import StorageError
from gateway.insights import trips as trip_sql
from gateway.insights import utilisation as util_sql
from gateway.storage import StorageMode
from schemas.limits import MAX_PAST_AGE_MS

__all__ = ["REFRESH_LOCK", "InsightRefresher", "RefreshOptions", "RefreshReport"]

REFRESH_LOCK: Final = (0x7467_0009, 1)
"""Advisory lock (two int keys) held while trips and utilisation are being written."""

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RefreshOptions:
    """How the refresher works.

    Args:
        interval_s: time between two refreshes.
        overlap_s: telemetry received up to this long before the last refresh is looked at
            again (it may have been committed after that refresh read).
        max_past_age_s: the oldest device time a sample may have when it arrives (the ingest
            refuses older ones), which bounds the search for new samples.
        rebuild_batch_cars: cars per transaction in a rebuild.
        work_mem: PostgreSQL's `work_mem` for the refresher's own transactions (its window
            sorts over a car's samples); the server's default is meant for small queries.
        jit: let PostgreSQL compile the refresher's queries (off: compiling costs a second or
            two per statement, more than these statements take).
        continue_open_trips: fold a car's new samples into its open trip when they all come
            after the last one folded in (off: every refresh derives open trips again from their
            start, as before migration 0007; for comparison in benchmarks).
    """

    interval_s: float = 60.0
    overlap_s: float = 600.0
    max_past_age_s: float = MAX_PAST_AGE_MS / 1000
    rebuild_batch_cars: int = 100
    work_mem: str = "64MB"
    jit: bool = False
    continue_open_trips: bool = True


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one refresh (or rebuild) did."""

    skipped: bool  # another gateway was refreshing
    rebuild: bool
    cars: int  # cars whose trips were re-derived or continued
    trips_deleted: int
    trips_written: int
    utilisation_rows: int
    duration_s: float
    refreshed_at: datetime | None
    cars_continued: int = 0  # of `cars`: open trips continued with only their new samples


_LOCK_TRY: Final = "SELECT pg_try_advisory_xact_lock(%s, %s)"
_STATE: Final = "SELECT now(), received_watermark, refreshed_at FROM insight_state FOR UPDATE"


class InsightRefresher:
    """Derives trips and utilisation from the stored telemetry, incrementally.

    Args:
        pool: the gateway's connection pool.
        storage_mode: picks `time_bucket` or `date_bin` for the hourly buckets.
        options: interval, overlap, batch size.

    Raises (refresh, rebuild):
        StorageError: the database cannot be reached or refused a statement.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        storage_mode: StorageMode,
        options: RefreshOptions | None = None,
    ) -> None:
        self._pool = pool
        self._mode: StorageMode = storage_mode
        self.options = options or RefreshOptions()
        self._materialise = util_sql.materialise_sql(storage_mode)
        self._scope_util = util_sql.scope_utilisation(storage_mode)
        self._rollups = util_sql.rollup_sql(storage_mode)
        self._wakeup = asyncio.Event()
        self.last_report: RefreshReport | None = None

    def request(self) -> None:
        """Ask the running loop for a refresh now (it does not wait out its interval)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Refresh every `interval_s` until cancelled; a database outage is waited out."""
        while True:
            try:
                await self.refresh()
            except StorageError as exc:
                # The next turn tries again; nothing is lost, the watermark did not move.
                _log.warning("insights.refresh_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.options.interval_s)
            self._wakeup.clear()

    async def refresh(self) -> RefreshReport:
        """One incremental refresh (a rebuild, the first time on a database)."""
        started = time.perf_counter()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if not await _value(conn, _LOCK_TRY, REFRESH_LOCK):
                    return self._report(started, skipped=True)
                await self._tune(conn)
                now, watermark, refreshed_at = await _row(conn, _STATE)
                if watermark is not None:
                    report = await self._incremental(conn, now, watermark, refreshed_at)
                    return self._report(started, **report)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(f"the insights refresh failed: {exc}") from exc
        # Never refreshed: derive everything, a batch of cars at a time.
        return await self._rebuild(None, None, None, wait=False)

    async def _incremental(
        self,
        conn: psycopg.AsyncConnection[Any],
        now: datetime,
        watermark: datetime,
        refreshed_at: datetime | None,
    ) -> dict[str, Any]:
        since = watermark - timedelta(seconds=self.options.overlap_s)
        oldest = since - timedelta(seconds=self.options.max_past_age_s)
        # What the next refresh's window will start at (its watermark is this `now`).
        next_since = now - timedelta(seconds=self.options.overlap_s)
        await conn.execute(trip_sql.CREATE_TRIP_SCOPE)
        await conn.execute(
            trip_sql.SCOPE_NEW_TELEMETRY,
            {
                "since": since,
                "oldest": oldest,
                "next_since": next_since,
                "continuing": self.options.continue_open_trips,
            },
        )
        counts = await self._derive(conn, next_since)
        rows = await self._utilisation(conn, now, refreshed_at)
        await self._rollup(conn, await _value(conn, "SELECT min(from_hour) FROM tgw_util_scope"))
        await conn.execute(
            "UPDATE insight_state SET received_watermark = %s, refreshed_at = %s", (now, now)
        )
        return {**counts, "utilisation_rows": rows, "refreshed_at": now}

    async def _derive(
        self, conn: psycopg.AsyncConnection[Any], next_since: datetime
    ) -> dict[str, Any]:
        """Trips of the scoped cars: continued (tail_time set) or derived from the anchor."""
        await conn.execute("ANALYZE tgw_trip_scope")
        cars, continued, oldest, oldest_tail = await _row(
            conn,
            "SELECT count(*), count(tail_time), min(anchor) FILTER (WHERE tail_time IS NULL), "
            "min(tail_time) FROM tgw_trip_scope",
        )
        await conn.execute(trip_sql.CREATE_CHANGES)
        await conn.execute(trip_sql.UPDATE_FIRST_SEEN)
        deleted = written = 0
        if cars > continued:
            bound = {"oldest_anchor": oldest or "-infinity", "next_since": next_since}
            deleted = (await conn.execute(trip_sql.DELETE_SCOPED_TRIPS, bound)).rowcount
            await conn.execute(trip_sql.DELETE_SCOPED_TAILS)
            written += (await conn.execute(trip_sql.DERIVE_TRIPS, bound)).rowcount
        if continued:
            await conn.execute(trip_sql.KEEP_OPEN_TRIPS)
            bound = {"oldest_tail": oldest_tail, "next_since": next_since}
            written += (await conn.execute(trip_sql.CONTINUE_TRIPS, bound)).rowcount
        await conn.execute(trip_sql.CHANGES)
        return {
            "cars": int(cars),
            "cars_continued": int(continued),
            "trips_deleted": deleted,
            "trips_written": written,
        }

    async def _utilisation(
        self,
        conn: psycopg.AsyncConnection[Any],
        now: datetime,
        refreshed_at: datetime | None,
        *,
        only_scoped: bool = False,
    ) -> int:
        await conn.execute(util_sql.CREATE_UTIL_SCOPE)
        await conn.execute(self._scope_util, {"refreshed_at": refreshed_at})
        if only_scoped:
            await conn.execute(
                "DELETE FROM tgw_util_scope u WHERE NOT EXISTS "
                "(SELECT 1 FROM tgw_trip_scope s WHERE s.vin = u.vin)"
            )
        await conn.execute("ANALYZE tgw_util_scope")
        earliest = await _value(conn, "SELECT min(from_hour) FROM tgw_util_scope")
        await conn.execute(
            util_sql.DELETE_SCOPED_UTILISATION, {"earliest": earliest or "-infinity"}
        )
        return (await conn.execute(self._materialise, {"now": now})).rowcount

    async def _tune(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Transaction-local: the pool's connection goes back with the server's defaults.
        await conn.execute(
            "SELECT set_config('work_mem', %s, true), set_config('jit', %s, true)",
            (self.options.work_mem, "on" if self.options.jit else "off"),
        )

    async def _rollup(self, conn: psycopg.AsyncConnection[Any], since: datetime | None) -> None:
        if since is None:
            return
        for statement in self._rollups:
            await conn.execute(statement, {"since": since})

    async def rebuild(
        self,
        *,
        vins: Sequence[str] | None = None,
        since: datetime | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> RefreshReport:
        """Derive trips (and utilisation) again from the stored telemetry.

        Args:
            vins: only these cars (default: every car).
            since: only from this device time on (default: from each car's first sample).
            on_progress: called with (cars done, cars in all) after each batch.

        Waits for a refresh under way on another gateway to finish first.
        """
        return await self._rebuild(vins, since, on_progress, wait=True)

    async def _rebuild(
        self,
        vins: Sequence[str] | None,
        since: datetime | None,
        on_progress: Callable[[int, int], None] | None,
        *,
        wait: bool,
    ) -> RefreshReport:
        started = time.perf_counter()
        totals = {
            "cars": 0,
            "cars_continued": 0,
            "trips_deleted": 0,
            "trips_written": 0,
            "utilisation_rows": 0,
        }
        try:
            async with self._pool.connection() as conn:
                if wait:
                    await conn.execute("SELECT pg_advisory_lock(%s, %s)", REFRESH_LOCK)
                    locked = True
                else:
                    locked = await _value(conn, "SELECT pg_try_advisory_lock(%s, %s)", REFRESH_LOCK)
                await conn.commit()
                if not locked:
                    return self._report(started, skipped=True)
                try:
                    first_now = await self._rebuild_batches(
                        conn, vins, since, totals, on_progress, first_time_only=not wait
                    )
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s, %s)", REFRESH_LOCK)
                    await conn.commit()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(f"the insights rebuild failed: {exc}") from exc
        if first_now is None:
            return self._report(started, skipped=True)
        return self._report(started, rebuild=True, refreshed_at=first_now, **totals)

    async def _rebuild_batches(
        self,
        conn: psycopg.AsyncConnection[Any],
        vins: Sequence[str] | None,
        since: datetime | None,
        totals: dict[str, int],
        on_progress: Callable[[int, int], None] | None,
        *,
        first_time_only: bool,
    ) -> datetime | None:
        everyone = vins is None
        async with conn.transaction():
            first_now, watermark, refreshed_at = await _row(conn, _STATE)
            if first_time_only and watermark is not None:
                return None  # another gateway built everything meanwhile
            cars = (
                [str(row[0]) for row in await (await conn.execute(trip_sql.ALL_CARS)).fetchall()]
                if vins is None
                else sorted(set(vins))
            )
        size = self.options.rebuild_batch_cars
        rollup_since: datetime | None = None
        # The window the next refresh looks at: the tails are counted over it.
        next_watermark = (
            first_now if (everyone and since is None) or watermark is None else watermark
        )
        next_since = next_watermark - timedelta(seconds=self.options.overlap_s)
        for offset in range(0, len(cars), size):
            batch = cars[offset : offset + size]
            async with conn.transaction():
                await self._tune(conn)
                now = await _value(conn, "SELECT now()")
                await conn.execute(trip_sql.CREATE_TRIP_SCOPE)
                await conn.execute(
                    trip_sql.SCOPE_VINS, {"vins": batch, "since": since or "-infinity"}
                )
                counts = await self._derive(conn, next_since)
                await conn.execute(trip_sql.FORCE_CHANGES)
                # A car's utilisation from the hour its trips begin; the others are untouched.
                rows = await self._utilisation(conn, now, refreshed_at, only_scoped=True)
                changed = await _value(conn, "SELECT min(from_hour) FROM tgw_util_scope")
                if changed is not None:
                    rollup_since = changed if rollup_since is None else min(rollup_since, changed)
            for key, value in (*counts.items(), ("utilisation_rows", rows)):
                totals[key] += value
            if on_progress is not None:
                on_progress(min(offset + size, len(cars)), len(cars))
        async with conn.transaction():
            # Once for every batch: each batch's own rollup would aggregate the same hours again.
            await self._tune(conn)
            await self._rollup(conn, rollup_since)
        if everyone and since is None:
            async with conn.transaction():
                # Rows received since the rebuild began are picked up by the next refresh.
                await conn.execute(
                    "UPDATE insight_state SET received_watermark = %(t)s, refreshed_at = "
                    "least(coalesce(refreshed_at, %(t)s), %(t)s), rebuilt_at = %(t)s",
                    {"t": first_now},
                )
        return cast(datetime, first_now)

    def _report(self, started: float, **fields: Any) -> RefreshReport:
        report = RefreshReport(
            skipped=fields.get("skipped", False),
            rebuild=fields.get("rebuild", False),
            cars=fields.get("cars", 0),
            cars_continued=fields.get("cars_continued", 0),
            trips_deleted=fields.get("trips_deleted", 0),
            trips_written=fields.get("trips_written", 0),
            utilisation_rows=fields.get("utilisation_rows", 0),
            duration_s=round(time.perf_counter() - started, 3),
            refreshed_at=fields.get("refreshed_at"),
        )
        if not report.skipped:
            self.last_report = report
            _log.info(
                "insights.refreshed",
                rebuild=report.rebuild,
                cars=report.cars,
                cars_continued=report.cars_continued,
                trips_deleted=report.trips_deleted,
                trips_written=report.trips_written,
                utilisation_rows=report.utilisation_rows,
                duration_s=report.duration_s,
            )
        return report


async def _row(conn: psycopg.AsyncConnection[Any], query: LiteralString) -> tuple[Any, ...]:
    async with conn.cursor() as cur:
        await cur.execute(query)
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _value(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, params: Sequence[Any] = ()
) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        row = await cur.fetchone()
    return None if row is None else row[0]
