"""Figures read back from the database after a phase, from each row's real commit time.

PostgreSQL runs with `track_commit_timestamp = on`, so `pg_xact_commit_timestamp(xmin)` is
the moment the transaction that inserted a row committed. A row's `time` is the sample's
`ts`, which the load generator sets when it builds the message (ms resolution). Hence:

- committed rate over [t0, t1] = rows whose commit time falls in [t0, t1], divided by t1 - t0;
- publish-to-commit latency of a row = commit time - `time` (truncation of `ts` to whole
  milliseconds adds up to 1 ms).

Both come from the database alone; nothing the gateway reports about itself is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

__all__ = [
    "IntegrityReport",
    "LatencyReport",
    "committed_between",
    "integrity",
    "latency",
    "settle",
]


def _at(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, tz=UTC)


def committed_between(dsn: str, since_s: float, start_s: float, end_s: float) -> int:
    """Rows (with device time after `since_s`) whose transaction committed in [start, end)."""
    query = """
        SELECT count(*) FROM telemetry
        WHERE time >= %s
          AND pg_xact_commit_timestamp(xmin) >= %s AND pg_xact_commit_timestamp(xmin) < %s
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (_at(since_s), _at(start_s), _at(end_s))).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True, slots=True)
class LatencyReport:
    rows: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(dsn: str, start_s: float, end_s: float) -> LatencyReport:
    """Publish-to-commit latency of the samples published in [start, end)."""
    query = """
        WITH lag AS (
            SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - time) * 1000 AS ms
            FROM telemetry WHERE time >= %s AND time < %s
        )
        SELECT count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
               max(ms)
        FROM lag
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (_at(start_s), _at(end_s))).fetchone()
    assert row is not None
    count, p50, p99, worst = row
    if not count:
        return LatencyReport(0, float("nan"), float("nan"), float("nan"))
    return LatencyReport(int(count), float(p50), float(p99), float(worst))


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    rows: int
    distinct_keys: int


def integrity(dsn: str, since_s: float) -> IntegrityReport:
    """Rows and distinct idempotency keys among samples published after `since_s`."""
    query = """
        SELECT count(*), count(DISTINCT (vin, boot_id, seq)) FROM telemetry WHERE time >= %s
    """
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (_at(since_s),)).fetchone()
    assert row is not None
    return IntegrityReport(int(row[0]), int(row[1]))


def settle(dsn: str) -> float:
    """Do a maximum phase's database upkeep now (VACUUM ANALYZE, CHECKPOINT); seconds taken.

    A minute at the maximum leaves about a million fresh rows: autovacuum would vacuum and
    analyse them (and a checkpoint write them out) during the next phase, on the same cores,
    and a latency figure taken then would measure that aftermath instead of the steady rate.
    """
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    return time.monotonic() - started
