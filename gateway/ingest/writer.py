"""The database side of ingest: one batch, one transaction, COPY then idempotent insert.

Telemetry is COPY'd straight into its table; a batch holding a row stored before (a
redelivery) is written again through a staging table with `ON CONFLICT DO NOTHING`, so nothing
is stored twice and the count of duplicates falls out of the row counts. The SQL is
`gateway.storage.sql`'s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import StorageError
from gateway.ingest.batch import DeadLetterRow, IngestBatch, StatusUpdate, TelemetryRow
from gateway.storage import sql

__all__ = ["BatchRefusedError", "BatchWriter", "StorageUnavailableError", "WriteResult"]

log = structlog.get_logger(__name__)


class StorageUnavailableError(StorageError):
    """The database cannot be reached now; the same batch may be retried later."""


class BatchRefusedError(StorageError):
    """The database refused the batch's content; retrying the same rows will not help."""


class _RowsRepeatedError(StorageError):
    """Some telemetry row was stored before: write the batch through staging (internal)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    telemetry_inserted: int
    telemetry_duplicates: int
    events_inserted: int
    events_duplicates: int
    dead_letters: int
    statuses: int
    commit_seconds: float


class BatchWriter:
    """Writes `IngestBatch`es through a connection pool, one transaction each.

    Args:
        pool: the database connections.
        last_seen_resolution_s: a car's `vehicles.last_seen_at` is rewritten only once it
            advanced by this much since this writer last wrote it (0: with every batch).
            Each batch would otherwise update one `vehicles` row per car in it; the stale
            marker (`maintenance.mark_stale_vehicles`) allows for this resolution.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Any], *, last_seen_resolution_s: float = 0.0
    ) -> None:
        self._pool = pool
        self._last_seen_resolution = timedelta(seconds=last_seen_resolution_s)
        # What this writer last committed as each car's last_seen_at (one entry per car).
        self._last_seen_written: dict[str, datetime] = {}

    @staticmethod
    async def prepare_connection(conn: psycopg.AsyncConnection[Any]) -> None:
        """Pool `configure` hook: create this connection's staging tables once."""
        await conn.execute(sql.CREATE_STAGES)
        await conn.commit()

    async def registered(self, vins: list[str]) -> set[str]:
        """Which of `vins` are registered vehicles."""
        async with self._connection() as conn, conn.cursor() as cur:
            await cur.execute(sql.SELECT_REGISTERED, (vins,))
            return {row[0] for row in await cur.fetchall()}

    async def write(self, batch: IngestBatch) -> WriteResult:
        """Commit everything in `batch` in one transaction.

        Raises:
            StorageUnavailableError: the database is unreachable; retry later.
            BatchRefusedError: the database refused some row; split the batch.
        """
        started = time.perf_counter()
        seen = self._last_seen_due(batch.last_seen)
        try:
            telemetry, events = await self._write(batch, seen, direct=True)
        except _RowsRepeatedError:
            # Rare (a redelivery): the transaction was rolled back; again, through staging.
            telemetry, events = await self._write(batch, seen, direct=False)
        self._last_seen_written.update(seen)
        return WriteResult(
            telemetry_inserted=telemetry,
            telemetry_duplicates=len(batch.telemetry) - telemetry,
            events_inserted=events,
            events_duplicates=len(batch.events) - events,
            dead_letters=len(batch.dead_letters),
            statuses=len(batch.statuses),
            commit_seconds=time.perf_counter() - started,
        )

    async def _write(
        self, batch: IngestBatch, seen: dict[str, datetime], *, direct: bool
    ) -> tuple[int, int]:
        """One transaction; (telemetry rows inserted, event rows inserted)."""
        async with self._connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    telemetry, one_per_car = await self._insert_telemetry(cur, batch, direct=direct)
                    if batch.telemetry:
                        await cur.execute(
                            sql.UPSERT_LATEST_STATE_ONE_PER_CAR
                            if one_per_car
                            else sql.UPSERT_LATEST_STATE_FROM_STAGE
                        )
                    events = 0
                    if batch.events:
                        async with cur.copy(sql.COPY_EVENTS_STAGE) as copy:
                            for event in batch.events:
                                await copy.write_row(event)
                        await cur.execute(sql.INSERT_EVENTS_FROM_STAGE)
                        events = max(cur.rowcount, 0)
                    if seen:
                        await cur.execute(sql.TOUCH_VEHICLES, (list(seen), list(seen.values())))
                    await self._apply_statuses(cur, batch.statuses)
                    await self._keep_dead_letters(cur, batch.dead_letters)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise BatchRefusedError(f"database refused the batch: {exc}") from exc
        return telemetry, events

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # Pool and connection failures become one retryable error at this edge.
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StorageUnavailableError(f"database unavailable: {exc}") from exc

    def _last_seen_due(self, last_seen: dict[str, datetime]) -> dict[str, datetime]:
        """The cars whose last_seen_at moved on by the resolution since we last wrote it."""
        resolution = self._last_seen_resolution
        if not resolution:
            return last_seen
        written = self._last_seen_written
        return {
            vin: at
            for vin, at in last_seen.items()
            if (before := written.get(vin)) is None or at - before >= resolution
        }

    @staticmethod
    async def _insert_telemetry(
        cur: psycopg.AsyncCursor[Any], batch: IngestBatch, *, direct: bool
    ) -> tuple[int, bool]:
        """Insert what is new of the batch's telemetry.

        Returns how many rows that was, and whether the stage holds one sample per car.

        Leaves in the stage what `UPSERT_LATEST_STATE_FROM_STAGE` reads. `direct`: COPY
        straight into the table, one pass over the rows, and only the latest-state candidates
        into the stage. A row stored before (a redelivered or repeated message) makes that
        COPY fail: `_RowsRepeatedError`, and the caller writes the batch again with `direct`
        off: every row through the stage and `ON CONFLICT DO NOTHING`, which skips such rows.
        """
        rows = batch.telemetry
        if not rows:
            return 0, True
        cars = len(batch.rows_by_car)
        if not direct:
            await _copy(cur, sql.COPY_TELEMETRY_STAGE, rows)
            await cur.execute(sql.INSERT_TELEMETRY_FROM_STAGE)
            return max(cur.rowcount, 0), len(rows) == cars
        try:
            await _copy(cur, sql.COPY_TELEMETRY, rows)
        except psycopg.errors.UniqueViolation as exc:
            raise _RowsRepeatedError(str(exc)) from exc
        candidates = batch.latest_candidates()
        await _copy(cur, sql.COPY_TELEMETRY_STAGE, candidates)
        return len(rows), len(candidates) == cars

    @staticmethod
    async def _apply_statuses(cur: psycopg.AsyncCursor[Any], statuses: list[StatusUpdate]) -> None:
        if not statuses:
            return
        ordered = sorted(statuses, key=lambda status: (status.vin, status.changed_at))
        await cur.executemany(
            sql.APPLY_STATUS,
            [
                {
                    "vin": s.vin,
                    "online": s.online,
                    "changed_at": s.changed_at,
                    "boot_id": s.boot_id,
                    "model": s.model,
                    "firmware": s.firmware,
                    "capabilities": list(s.capabilities) if s.capabilities is not None else None,
                    "applies_after": s.applies_after,
                }
                for s in ordered
            ],
        )

    @staticmethod
    async def _keep_dead_letters(
        cur: psycopg.AsyncCursor[Any], letters: list[DeadLetterRow]
    ) -> None:
        first = [letter.as_row() for letter in letters if not letter.redelivered]
        if first:
            async with cur.copy(sql.COPY_DEAD_LETTERS) as copy:
                for row in first:
                    await copy.write_row(row)
        again = [letter for letter in letters if letter.redelivered]
        if again:
            await cur.executemany(
                sql.INSERT_DEAD_LETTER_UNLESS_KEPT,
                [
                    dict(zip(sql.DEAD_LETTER_COLUMNS, letter.as_row(), strict=True))
                    for letter in again
                ],
            )


async def _copy(cur: psycopg.AsyncCursor[Any], statement: str, rows: list[TelemetryRow]) -> None:
    """Binary COPY of telemetry-shaped rows."""
    async with cur.copy(statement) as copy:
        copy.set_types(list(sql.TELEMETRY_COPY_TYPES))
        for row in rows:
            await copy.write_row(row)
