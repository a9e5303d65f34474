"""Store and forward: a bounded on-disk queue (SQLite) of everything a car has to send.

Every sample, event and command result is appended here before it is published, and
deleted only when the broker acknowledges it (PUBACK, QoS 1). A car that loses its
connection, or restarts, therefore finds its backlog where it left it.

One SQLite file may hold the queues of many cars (a fleet in one process shares one
file and one connection); each car sees its own rows through `VehicleOutbox`.
Writes are batched and group-committed every `commit_interval_s` (WAL,
synchronous=NORMAL): a power cut loses at most that window of rows that were not yet
acknowledged either. A row acknowledged within that window is never written at all,
which is what keeps thousands of connected cars cheap. The ids of executed commands are
committed at once, before the command runs; the results the car sent for each are kept
beside them, so that a redelivered command is answered with the same results again.

When a car's queue is full the oldest rows are dropped; the count and the time of the
oldest dropped row are kept (persistently) until the car reports them in a
`backlog_overflow` event.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from device_sim.errors import OutboxError

__all__ = ["OutboxKind", "OutboxRecord", "OutboxStore", "VehicleOutbox"]

_log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    vin         TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    boot_id     TEXT    NOT NULL,
    seq         INTEGER,
    ts          INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    topic       TEXT,
    correlation BLOB
);
CREATE INDEX IF NOT EXISTS outbox_vin_id ON outbox (vin, id);
CREATE TABLE IF NOT EXISTS overflow (
    vin                 TEXT PRIMARY KEY,
    dropped_total       INTEGER NOT NULL,
    unreported          INTEGER NOT NULL,
    oldest_unreported_ts INTEGER
);
CREATE TABLE IF NOT EXISTS seen_commands (
    vin        TEXT    NOT NULL,
    command_id TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (vin, command_id)
);
CREATE INDEX IF NOT EXISTS seen_commands_nonce ON seen_commands (vin, nonce);
CREATE TABLE IF NOT EXISTS command_results (
    vin        TEXT    NOT NULL,
    command_id TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (vin, command_id, position)
);
"""


class OutboxKind(IntEnum):
    """What a queued row holds (and so which topic it goes to)."""

    SAMPLE = 0  # a TelemetrySample: batched into TelemetryMessages
    EVENT = 1  # an event message, sent alone
    RESULT = 2  # a CommandResultMessage, sent alone to its response topic


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One queued row."""

    id: int
    kind: OutboxKind
    boot_id: str
    seq: int | None
    ts: int
    body: str  # JSON
    topic: str | None = None  # results only: the response topic
    correlation: bytes | None = None  # results only: MQTT 5 correlation data


@dataclass(frozen=True, slots=True)
class OverflowReport:
    """Rows dropped since the last report."""

    dropped: int
    oldest_dropped_ts: int | None


class OutboxStore:
    """One SQLite file of queues (an async context manager; close is idempotent).

    Args:
        path: the database file; created with its directory if missing.
        commit_interval_s: group-commit period.
    """

    def __init__(self, path: Path, *, commit_interval_s: float = 0.05) -> None:
        self.path = path
        self._commit_interval_s = commit_interval_s
        self._conn: sqlite3.Connection | None = None
        self._committer: asyncio.Task[None] | None = None
        self._closed = False
        self._vehicles: dict[str, VehicleOutbox] = {}
        self._next_id = 1
        # Write-behind: rows appended but not yet in the file, and ids acknowledged since.
        self._pending_rows: dict[int, tuple[object, ...]] = {}
        self._pending_deletes: dict[str, list[int]] = {}

    async def __aenter__(self) -> Self:
        self.open()
        self._committer = asyncio.get_running_loop().create_task(
            self._commit_loop(), name=f"outbox-commit:{self.path.name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def open(self) -> None:
        """Open (and create) the database; `__aenter__` does this and starts the committer."""
        if self._conn is not None:
            return
        if self._closed:
            raise OutboxError("this outbox store was closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            highest = conn.execute(
                "SELECT MAX(n) FROM (SELECT MAX(id) AS n FROM outbox UNION ALL "
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox')"
            ).fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._conn = conn
        self._next_id = int(highest or 0) + 1

    async def aclose(self) -> None:
        """Commit what is pending and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                # Ours was cancelled on purpose; re-raise only if *we* are being cancelled.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self.close_sync()

    def close_sync(self) -> None:
        """Commit and close without the event loop (for synchronous users and tests)."""
        self._closed = True
        if self._conn is not None:
            try:
                self.commit()
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

    def vehicle(self, vin: str, *, max_records: int) -> VehicleOutbox:
        """The queue of one car (created on first use; the same object afterwards)."""
        outbox = self._vehicles.get(vin)
        if outbox is None:
            outbox = VehicleOutbox(self, vin, max_records)
            self._vehicles[vin] = outbox
        return outbox

    # -- used by VehicleOutbox ----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError("the outbox is not open")
        return self._conn

    def _write(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        conn = self._db()
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN")
            return conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox write failed ({self.path}): {exc}") from exc

    def _write_many(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        conn = self._db()
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN")
            return conn.executemany(sql, rows).rowcount
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox write failed ({self.path}): {exc}") from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed ({self.path}): {exc}") from exc

    def flush(self) -> None:
        """Write pending rows and deletions to the file (inside the open transaction)."""
        if self._pending_rows:
            rows = list(self._pending_rows.values())
            self._pending_rows.clear()
            self._write_many(
                "INSERT INTO outbox (id, vin, kind, boot_id, seq, ts, body, topic, correlation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        if self._pending_deletes:
            pending, self._pending_deletes = self._pending_deletes, {}
            for vin, ids in pending.items():
                deleted = self._write_many(
                    "DELETE FROM outbox WHERE id = ?", ((record_id,) for record_id in ids)
                )
                vehicle = self._vehicles.get(vin)
                if vehicle is not None and deleted < len(ids):
                    # Some were gone already (dropped on overflow): they were counted twice.
                    vehicle._size += len(ids) - deleted

    def commit(self) -> None:
        """Flush and commit now (the committer does this every `commit_interval_s`)."""
        conn = self._conn
        if conn is None:
            return
        self.flush()
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox commit failed ({self.path}): {exc}") from exc

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval_s)
            self.commit()


class VehicleOutbox:
    """One car's queue in an `OutboxStore`; also remembers the car's executed commands."""

    def __init__(self, store: OutboxStore, vin: str, max_records: int) -> None:
        if max_records < 2:
            raise OutboxError("an outbox holds at least 2 records")
        self._store = store
        self.vin = vin
        self.max_records = max_records
        rows = store._read("SELECT COUNT(*) FROM outbox WHERE vin = ?", (vin,))
        self._size = int(rows[0][0]) + sum(
            1 for row in store._pending_rows.values() if row[1] == vin
        )
        overflow = store._read(
            "SELECT dropped_total, unreported, oldest_unreported_ts FROM overflow WHERE vin = ?",
            (vin,),
        )
        if overflow:
            total, unreported, oldest = overflow[0]
            self.dropped_total = int(total)
            self._unreported = int(unreported)
            self._oldest_unreported_ts = None if oldest is None else int(oldest)
        else:
            self.dropped_total = 0
            self._unreported = 0
            self._oldest_unreported_ts = None

    @property
    def size(self) -> int:
        """Rows waiting (not yet acknowledged by the broker)."""
        self._store.flush()
        return max(0, self._size)

    @property
    def unreported_overflow(self) -> int:
        return self._unreported

    def append(
        self,
        kind: OutboxKind,
        *,
        boot_id: str,
        seq: int | None,
        ts: int,
        body: str,
        topic: str | None = None,
        correlation: bytes | None = None,
    ) -> OutboxRecord:
        """Queue a row, dropping the oldest rows first if the queue is full."""
        if self._size >= self.max_records:
            self._drop_oldest(max(1, self.max_records // 100))
        store = self._store
        store._db()  # refuse work on a closed store now, not at the next flush
        record_id = store._next_id
        store._next_id += 1
        store._pending_rows[record_id] = (
            record_id, self.vin, int(kind), boot_id, seq, ts, body, topic, correlation
        )  # fmt: skip
        self._size += 1
        return OutboxRecord(record_id, kind, boot_id, seq, ts, body, topic, correlation)

    def acknowledge(self, record_ids: Sequence[int]) -> None:
        """The broker has these rows: delete them (a row already gone is not an error)."""
        if not record_ids:
            return
        store = self._store
        pending = store._pending_rows
        # Rows still pending are simply never written; the others are deleted at the flush.
        written = [record_id for record_id in record_ids if pending.pop(record_id, None) is None]
        if written:
            store._pending_deletes.setdefault(self.vin, []).extend(written)
        self._size -= len(record_ids)  # corrected at the flush for rows that were gone

    def last_id(self) -> int:
        """The highest row id in the whole store (rows appended later get higher ids)."""
        return self._store._next_id - 1

    def backlog(self, *, after_id: int, before_id: int, limit: int) -> list[OutboxRecord]:
        """Queued rows with after_id < id < before_id, oldest first."""
        self._store.flush()
        rows = self._store._read(
            "SELECT id, kind, boot_id, seq, ts, body, topic, correlation FROM outbox "
            "WHERE vin = ? AND id > ? AND id < ? ORDER BY id LIMIT ?",
            (self.vin, after_id, before_id, limit),
        )
        return [
            OutboxRecord(
                int(r[0]),
                OutboxKind(r[1]),
                str(r[2]),
                None if r[3] is None else int(r[3]),
                int(r[4]),
                str(r[5]),
                None if r[6] is None else str(r[6]),
                None if r[7] is None else bytes(r[7]),
            )
            for r in rows
        ]

    def take_overflow_report(self) -> OverflowReport | None:
        """Rows dropped since the last report, and reset the count (None if nothing dropped)."""
        if self._unreported == 0:
            return None
        report = OverflowReport(self._unreported, self._oldest_unreported_ts)
        self._unreported = 0
        self._oldest_unreported_ts = None
        self._save_overflow()
        return report

    def restore_overflow_report(self, report: OverflowReport) -> None:
        """Put a report back (it could not be queued); counts dropped since are kept."""
        self._unreported += report.dropped
        if report.oldest_dropped_ts is not None:
            oldest = self._oldest_unreported_ts
            new = report.oldest_dropped_ts
            self._oldest_unreported_ts = new if oldest is None else min(oldest, new)
        self._save_overflow()

    def _drop_oldest(self, count: int) -> None:
        store = self._store
        store.flush()
        rows = store._read(
            "SELECT id, ts FROM outbox WHERE vin = ? ORDER BY id LIMIT ?", (self.vin, count)
        )
        if not rows:
            self._size = 0
            return
        dropped = store._write_many("DELETE FROM outbox WHERE id = ?", ((row[0],) for row in rows))
        oldest = min(int(row[1]) for row in rows)
        self._size = max(0, self._size - dropped)
        self.dropped_total += dropped
        self._unreported += dropped
        if self._oldest_unreported_ts is None or oldest < self._oldest_unreported_ts:
            self._oldest_unreported_ts = oldest
        self._save_overflow()
        _log.warning("outbox_overflow", vin=self.vin, dropped=dropped, total=self.dropped_total)

    def _save_overflow(self) -> None:
        self._store._write(
            "INSERT INTO overflow (vin, dropped_total, unreported, oldest_unreported_ts) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (vin) DO UPDATE SET "
            "dropped_total = excluded.dropped_total, unreported = excluded.unreported, "
            "oldest_unreported_ts = excluded.oldest_unreported_ts",
            (self.vin, self.dropped_total, self._unreported, self._oldest_unreported_ts),
        )

    # -- command memory -----------------------------------------------------------------------

    def command_seen(self, command_id: str, nonce: str) -> bool:
        """Whether a command with this id, or any command with this nonce, was taken before."""
        rows = self._store._read(
            "SELECT 1 FROM seen_commands WHERE vin = ? AND (command_id = ? OR nonce = ?) LIMIT 1",
            (self.vin, command_id, nonce),
        )
        return bool(rows)

    def remember_command(self, command_id: str, nonce: str, expires_at: int) -> None:
        """Record a command as taken, durably, before it is executed."""
        store = self._store
        store._write(
            "INSERT OR IGNORE INTO seen_commands (vin, command_id, nonce, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (self.vin, command_id, nonce, expires_at),
        )
        store.commit()

    def remember_result(self, command_id: str, body: str) -> None:
        """Keep a result sent for a remembered command (a redelivery is answered with it)."""
        store = self._store
        store._write(
            "INSERT INTO command_results (vin, command_id, position, body) VALUES (?, ?, "
            "(SELECT COUNT(*) FROM command_results WHERE vin = ? AND command_id = ?), ?)",
            (self.vin, command_id, self.vin, command_id, body),
        )

    def command_results(self, command_id: str) -> list[str] | None:
        """The results sent for a remembered command, in order; None if the id is unknown."""
        store = self._store
        if not store._read(
            "SELECT 1 FROM seen_commands WHERE vin = ? AND command_id = ?", (self.vin, command_id)
        ):
            return None
        rows = store._read(
            "SELECT body FROM command_results WHERE vin = ? AND command_id = ? ORDER BY position",
            (self.vin, command_id),
        )
        return [str(row[0]) for row in rows]

    def forget_commands_expired_before(self, ts: int) -> int:
        """Drop memory of commands that expired before `ts` (a car refuses those anyway)."""
        self._store._write(
            "DELETE FROM command_results WHERE vin = ? AND command_id IN "
            "(SELECT command_id FROM seen_commands WHERE vin = ? AND expires_at < ?)",
            (self.vin, self.vin, ts),
        )
        cursor = self._store._write(
            "DELETE FROM seen_commands WHERE vin = ? AND expires_at < ?", (self.vin, ts)
        )
        return cursor.rowcount
