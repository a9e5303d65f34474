"""What the cars published against what is stored: the fleet's ledger, counted in the database.

The ledger (`tgw sim fleet --ledger`) has one line per sample or event the broker acknowledged:
``vin,boot_id,seq,kind,ts``. It is copied into a temporary table once; each count then joins
it with `telemetry` (samples) and `events` (events) on the idempotency key, so

- published  = distinct keys in the ledger,
- stored     = those found in the database,
- lost       = those not found (after the gateway had time to catch up),
- duplicated = rows beyond the first for a key (storage is idempotent: must be 0).

`duplicates_anywhere` checks the whole of both tables, whatever the ledger says.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

__all__ = ["LedgerCheck", "LedgerCount", "duplicates_anywhere"]

_COUNT = """
    WITH matched AS (
        SELECT l.kind, count(t.vin) AS n
        FROM ledger_keys l
        LEFT JOIN telemetry t
          ON l.kind = 's' AND t.vin = l.vin AND t.boot_id = l.boot_id AND t.seq = l.seq
         AND t.time BETWEEN l.at - interval '1 second' AND l.at + interval '1 second'
        WHERE l.kind = 's'
        GROUP BY l.vin, l.boot_id, l.seq, l.kind
        UNION ALL
        SELECT l.kind, count(e.vin) AS n
        FROM ledger_keys l
        LEFT JOIN events e
          ON e.vin = l.vin AND e.boot_id = l.boot_id AND e.seq = l.seq
         AND e.time BETWEEN l.at - interval '1 second' AND l.at + interval '1 second'
        WHERE l.kind = 'e'
        GROUP BY l.vin, l.boot_id, l.seq, l.kind
    )
    SELECT count(*),
           count(*) FILTER (WHERE n > 0),
           count(*) FILTER (WHERE n = 0),
           coalesce(sum(n - 1) FILTER (WHERE n > 1), 0)
    FROM matched
"""


@dataclass(frozen=True, slots=True)
class LedgerCount:
    published: int
    stored: int
    lost: int
    duplicated: int


class LedgerCheck:
    """A connection holding a ledger in a temporary table (a sync context manager)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def __enter__(self) -> Self:
        self._conn = psycopg.connect(self._dsn, autocommit=True)
        self._conn.execute(
            "CREATE TEMPORARY TABLE ledger_rows (vin text, boot_id text, seq bigint, "
            "kind text, ts bigint)"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def load(self, files: Iterable[Path]) -> None:
        """Add ledger files (missing ones are skipped: a fleet that published nothing)."""
        assert self._conn is not None
        with self._conn.cursor() as cur:
            with cur.copy("COPY ledger_rows FROM STDIN (FORMAT csv)") as copy:
                for path in files:
                    if not path.exists():
                        continue
                    with path.open("rb") as handle:
                        while chunk := handle.read(1 << 20):
                            copy.write(chunk)
            cur.execute("DROP TABLE IF EXISTS ledger_keys")
            cur.execute(
                "CREATE TEMPORARY TABLE ledger_keys AS "
                "SELECT DISTINCT ON (vin, boot_id, seq, kind) vin, boot_id, seq, kind, "
                "timestamptz 'epoch' + ts * interval '1 millisecond' AS at FROM ledger_rows"
            )
            cur.execute("ANALYZE ledger_keys")

    def count(self) -> LedgerCount:
        assert self._conn is not None
        row = self._conn.execute(_COUNT).fetchone()
        assert row is not None
        published, stored, lost, duplicated = (int(value) for value in row)  # type: ignore[call-overload]
        return LedgerCount(published, stored, lost, duplicated)

    def wait_stored(self, timeout_s: float, quiet_s: float = 20.0) -> tuple[LedgerCount, float]:
        """Count until nothing is missing, or nothing more was stored for `quiet_s`, or
        `timeout_s` passed; return the last count and how long it took. (The database must
        be up: the ledger lives in this connection.)"""
        started = last_progress = time.monotonic()
        stored = -1
        while True:
            counted = self.count()
            now = time.monotonic()
            if counted.stored > stored:
                stored, last_progress = counted.stored, now
            if counted.lost == 0 or now - started > timeout_s or now - last_progress > quiet_s:
                return counted, now - started
            time.sleep(0.5)


def duplicates_anywhere(dsn: str) -> int:
    """Rows beyond the first per idempotency key, over all telemetry and events."""
    query = """
        SELECT (SELECT count(*) - count(DISTINCT (vin, boot_id, seq)) FROM telemetry)
             + (SELECT count(*) - count(DISTINCT (vin, boot_id, seq)) FROM events)
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
