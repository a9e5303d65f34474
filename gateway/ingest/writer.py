"""The database side of ingest: one batch, one transaction, COPY then idempotent insert.

Rows are COPY'd into per-connection temporary staging tables and moved into
the real tables with `ON CONFLICT DO NOTHING`, so a redelivered message stores
nothing twice and the count of duplicates falls out of the row counts.
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
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import StorageError
from gateway.ingest.batch import IngestBatch, StatusUpdate
from schemas import SIGNAL_NAMES

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


_TELEMETRY_COLUMNS = ("time", "vin", "boot_id", "seq", "received_at", *SIGNAL_NAMES)
_EVENT_COLUMNS = ("time", "vin", "boot_id", "seq", "type", "data", "received_at")
_LATEST_COLUMNS = ("time", "vin", "boot_id", "seq", *SIGNAL_NAMES)
_DEAD_LETTER_COLUMNS = (
    "received_at",
    "topic",
    "vin",
    "reason",
    "detail",
    "payload",
    "payload_size",
)


def _columns(names: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


# ON COMMIT DELETE ROWS: created once per connection, emptied by every commit.
_CREATE_STAGING = sql.SQL(
    """
    CREATE TEMP TABLE IF NOT EXISTS stage_telemetry
        (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_events
        (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_latest
        (LIKE latest_state INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    """
)
# Binary COPY for the high-volume rows: about 4 µs a row in psycopg against 15 µs in text
# (docs/benchmarks.md); it needs each column's type, read from the staging tables.
_COPY_TELEMETRY = sql.SQL("COPY stage_telemetry ({}) FROM STDIN (FORMAT BINARY)").format(
    _columns(_TELEMETRY_COLUMNS)
)
# Straight into the table: what almost every batch can do (no row of it stored before).
_COPY_TELEMETRY_DIRECT = sql.SQL("COPY telemetry ({}) FROM STDIN (FORMAT BINARY)").format(
    _columns(_TELEMETRY_COLUMNS)
)
_COPY_EVENTS = sql.SQL("COPY stage_events ({}) FROM STDIN").format(_columns(_EVENT_COLUMNS))
_COPY_LATEST = sql.SQL("COPY stage_latest ({}) FROM STDIN (FORMAT BINARY)").format(
    _columns(_LATEST_COLUMNS)
)
_COLUMN_TYPES = sql.SQL(
    """
    SELECT attname, atttypid::int FROM pg_attribute
    WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
    """
)
_COPY_DEAD_LETTERS = sql.SQL("COPY dead_letters ({}) FROM STDIN").format(
    _columns(_DEAD_LETTER_COLUMNS)
)
_MOVE_TELEMETRY = sql.SQL(
    "INSERT INTO telemetry ({cols}) SELECT {cols} FROM stage_telemetry ON CONFLICT DO NOTHING"
).format(cols=_columns(_TELEMETRY_COLUMNS))
_MOVE_EVENTS = sql.SQL(
    "INSERT INTO events ({cols}) SELECT {cols} FROM stage_events ON CONFLICT DO NOTHING"
).format(cols=_columns(_EVENT_COLUMNS))
# Latest state only moves forward in device time; a signal a sample lacks keeps its value.
# Rows go in VIN order, as in every statement here that touches per-car rows: gateway
# instances writing overlapping batches then lock them in the same order and cannot deadlock.
_MOVE_LATEST = sql.SQL(
    """
    INSERT INTO latest_state AS cur ({cols}, updated_at)
    SELECT {cols}, now() FROM stage_latest ORDER BY vin
    ON CONFLICT (vin) DO UPDATE SET
        time = EXCLUDED.time, boot_id = EXCLUDED.boot_id, seq = EXCLUDED.seq,
        {merge}, updated_at = now()
    WHERE cur.time <= EXCLUDED.time
    """
).format(
    cols=_columns(_LATEST_COLUMNS),
    merge=sql.SQL(", ").join(
        sql.SQL("{col} = COALESCE(EXCLUDED.{col}, cur.{col})").format(col=sql.Identifier(name))
        for name in SIGNAL_NAMES
    ),
)
_TOUCH_VEHICLES = sql.SQL(
    """
    INSERT INTO vehicles AS v (vin, last_seen_at)
    SELECT * FROM unnest(%s::text[], %s::timestamptz[]) AS seen (vin, at) ORDER BY vin
    ON CONFLICT (vin) DO UPDATE
        SET last_seen_at = GREATEST(v.last_seen_at, EXCLUDED.last_seen_at), stale = false
    """
)
# Connectivity moves forward in time too: an old will arriving late cannot flip a car offline
# (the last parameter is StatusUpdate.applies_after).
_APPLY_STATUS = sql.SQL(
    """
    INSERT INTO vehicles AS v
        (vin, online, online_changed_at, boot_id, model, firmware, capabilities)
    VALUES (%s, %s, %s, %s, %s, %s, COALESCE(%s::text[], '{}'))
    ON CONFLICT (vin) DO UPDATE SET
        online = EXCLUDED.online,
        online_changed_at = EXCLUDED.online_changed_at,
        boot_id = COALESCE(EXCLUDED.boot_id, v.boot_id),
        model = COALESCE(EXCLUDED.model, v.model),
        firmware = COALESCE(EXCLUDED.firmware, v.firmware),
        capabilities = CASE WHEN %s::text[] IS NULL THEN v.capabilities
                            ELSE EXCLUDED.capabilities END,
        stale = false
    WHERE v.online_changed_at IS NULL OR v.online_changed_at <= %s::timestamptz
    """
)
_REGISTERED = sql.SQL("SELECT vin FROM vehicles WHERE vin = ANY(%s)")


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
        self._copy_types: dict[str, list[int]] = {}

    @staticmethod
    async def prepare_connection(conn: psycopg.AsyncConnection[Any]) -> None:
        """Pool `configure` hook: create this connection's staging tables once."""
        await conn.execute(_CREATE_STAGING)
        await conn.commit()

    async def registered(self, vins: list[str]) -> set[str]:
        """Which of `vins` are registered vehicles."""
        async with self._connection() as conn, conn.cursor() as cur:
            await cur.execute(_REGISTERED, (vins,))
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
                    if not self._copy_types:
                        await self._read_copy_types(cur)
                    telemetry = await self._insert_telemetry(cur, batch.telemetry, direct=direct)
                    events = await self._stage_and_move(
                        cur, _COPY_EVENTS, _MOVE_EVENTS, batch.events
                    )
                    if batch.latest:
                        rows = [state.as_row() for state in batch.latest.values()]
                        await self._stage_and_move(
                            cur, _COPY_LATEST, _MOVE_LATEST, rows, self._copy_types["latest"]
                        )
                    if seen:
                        await cur.execute(_TOUCH_VEHICLES, (list(seen), list(seen.values())))
                    await self._apply_statuses(cur, batch.statuses)
                    if batch.dead_letters:
                        async with cur.copy(_COPY_DEAD_LETTERS) as copy:
                            for letter in batch.dead_letters:
                                await copy.write_row(
                                    (
                                        letter.received_at,
                                        letter.topic,
                                        letter.vin,
                                        letter.reason,
                                        letter.detail,
                                        letter.payload,
                                        letter.payload_size,
                                    )
                                )
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

    async def _read_copy_types(self, cur: psycopg.AsyncCursor[Any]) -> None:
        """The type oids of the binary COPYs' columns (the same on every connection)."""
        types: dict[str, list[int]] = {}
        for name, table, columns in (
            ("telemetry", "stage_telemetry", _TELEMETRY_COLUMNS),
            ("latest", "stage_latest", _LATEST_COLUMNS),
        ):
            await cur.execute(_COLUMN_TYPES, (table,))
            oids = {str(column): int(oid) for column, oid in await cur.fetchall()}
            types[name] = [oids[column] for column in columns]
        self._copy_types = types

    async def _insert_telemetry(
        self, cur: psycopg.AsyncCursor[Any], rows: list[tuple[object, ...]], *, direct: bool
    ) -> int:
        """Insert what is new of `rows`; return how many that was.

        `direct`: COPY straight into the table, one pass over the rows. A row stored before
        (a redelivered or repeated message) makes that COPY fail: `_RowsRepeatedError`, and
        the caller writes the batch again with `direct` off, through staging and
        `ON CONFLICT DO NOTHING`, which skips such rows.
        """
        if not rows:
            return 0
        types = self._copy_types["telemetry"]
        if not direct:
            return await self._stage_and_move(cur, _COPY_TELEMETRY, _MOVE_TELEMETRY, rows, types)
        try:
            async with cur.copy(_COPY_TELEMETRY_DIRECT) as copy:
                copy.set_types(types)
                for row in rows:
                    await copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise _RowsRepeatedError(str(exc)) from exc
        return len(rows)

    @staticmethod
    async def _stage_and_move(
        cur: psycopg.AsyncCursor[Any],
        copy_sql: sql.Composed,
        move_sql: sql.Composed,
        rows: list[tuple[object, ...]] | list[Any],
        types: list[int] | None = None,
    ) -> int:
        if not rows:
            return 0
        async with cur.copy(copy_sql) as copy:
            if types is not None:
                copy.set_types(types)
            for row in rows:
                await copy.write_row(row)
        await cur.execute(move_sql)
        return max(cur.rowcount, 0)

    @staticmethod
    async def _apply_statuses(cur: psycopg.AsyncCursor[Any], statuses: list[StatusUpdate]) -> None:
        if not statuses:
            return
        ordered = sorted(statuses, key=lambda status: (status.vin, status.changed_at))
        await cur.executemany(
            _APPLY_STATUS,
            [
                (
                    s.vin,
                    s.online,
                    s.changed_at,
                    s.boot_id,
                    s.model,
                    s.firmware,
                    list(s.capabilities) if s.capabilities is not None else None,
                    list(s.capabilities) if s.capabilities is not None else None,
                    s.applies_after,
                )
                for s in ordered
            ],
        )
