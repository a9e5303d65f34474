"""Daily partitions for plain PostgreSQL mode (TimescaleDB makes its chunks by itself).

Every range-partitioned table keyed on the single column `time` gets one partition per UTC
day, created ahead of time by the SQL function `tgw_ensure_partitions` (migration 0002,
postgres variant). Its DEFAULT partition catches any row outside the prepared days, so
nothing is ever refused; creating a day later moves that day's rows out of DEFAULT.
"""

from __future__ import annotations

import structlog

from gateway.storage._db import AnyConnection, fetch_all, fetch_value

__all__ = ["ensure_partitions", "time_partitioned_tables"]

_log = structlog.get_logger(__name__)


async def time_partitioned_tables(conn: AnyConnection) -> list[str]:
    """Names of the top-level tables in the current schema range-partitioned on `time`.

    Empty in TimescaleDB mode: hypertables are not native partitioned tables.
    """
    rows = await fetch_all(
        conn,
        """
        SELECT c.relname
        FROM pg_partitioned_table pt
        JOIN pg_class c ON c.oid = pt.partrelid
        JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
        WHERE pt.partstrat = 'r'
          AND pt.partnatts = 1
          AND a.attname = 'time'
          AND NOT c.relispartition
          AND c.relnamespace = current_schema()::regnamespace
        ORDER BY c.relname
        """,
    )
    return [str(name) for (name,) in rows]


async def ensure_partitions(
    conn: AnyConnection, days_ahead: int = 7, *, days_behind: int = 7
) -> int:
    """Create the missing daily partitions from `days_behind` days ago to `days_ahead` days on.

    A no-op (returning 0) in TimescaleDB mode. Safe to run from several gateways at once and
    as often as wanted; the gateway runs it periodically, `tgw db migrate` once per run. Each
    table is handled in its own short transaction (a savepoint when the caller holds one).

    Args:
        conn: a connection to the migrated database.
        days_ahead: how many days after today must have a partition.
        days_behind: how many days before today must have one (late data from dead zones).

    Returns:
        How many partitions were created.
    """
    if days_ahead < 0 or days_behind < 0:
        raise ValueError("days_ahead and days_behind must not be negative")
    created = 0
    for table in await time_partitioned_tables(conn):
        async with conn.transaction():
            count = await fetch_value(
                conn,
                """
                SELECT tgw_ensure_partitions(
                    %s::regclass,
                    now() - make_interval(days => %s),
                    now() + make_interval(days => %s)
                )
                """,
                (table, days_behind, days_ahead),
            )
        if count:
            _log.info("storage.partitions_created", table=table, count=count)
            created += int(count)
    return created
