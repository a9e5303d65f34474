"""Migrations against a real PostgreSQL/TimescaleDB: both storage modes, safety rails."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from structlog.testing import capture_logs

from gateway.errors import MigrationError, StorageError
from gateway.storage import (
    MigrationChecksumError,
    StorageMode,
    StorageModeError,
    apply_migrations,
    detect_storage_mode,
    ensure_partitions,
    migration_status,
)
from gateway.storage.migrate import discover_migrations

pytestmark = pytest.mark.integration

PACKAGE_MIGRATIONS = Path(__file__).parents[2] / "gateway" / "storage" / "migrations"
TABLES = {
    "vehicles",
    "telemetry",
    "latest_state",
    "events",
    "commands",
    "command_transitions",
    "audit_log",
    "dead_letters",
    "schema_migrations",
}


def expected_ids(mode: StorageMode) -> list[str]:
    return [v.for_mode(mode).id for v in discover_migrations()]


async def fetch(dsn: str, query: Any, params: Any = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def user_tables(dsn: str) -> set[str]:
    rows = await fetch(
        dsn,
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
        "AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
    )
    return {r["relname"] for r in rows}


@pytest.fixture(params=["auto", "postgres"])
def requested_mode(request: pytest.FixtureRequest) -> str:
    """`auto` (TimescaleDB when the session server has it) and `postgres` forced."""
    return str(request.param)


def resolved(requested: str, timescaledb: bool) -> StorageMode:
    if requested == "postgres" or not timescaledb:
        return "postgres"
    return "timescaledb"


async def test_migrations_apply_twice_cleanly(
    empty_database_dsn: str, postgres_server: Any, requested_mode: Any
) -> None:
    mode = resolved(requested_mode, postgres_server.timescaledb_enabled)

    with capture_logs() as logs:
        first = await apply_migrations(empty_database_dsn, storage_mode=requested_mode)
    second = await apply_migrations(empty_database_dsn, storage_mode=requested_mode)

    assert first == expected_ids(mode)
    assert second == []
    assert await user_tables(empty_database_dsn) >= TABLES
    rows = await fetch(
        empty_database_dsn,
        "SELECT version, variant, storage_mode, length(checksum) AS n FROM schema_migrations",
    )
    assert {r["storage_mode"] for r in rows} == {mode}
    assert {r["variant"] for r in rows} <= {"common", mode}
    assert all(r["n"] == 64 for r in rows)
    mode_lines = [e for e in logs if e["event"] == "storage.mode"]
    assert len(mode_lines) == 1
    assert mode_lines[0]["mode"] == mode


async def test_auto_mode_keeps_the_recorded_mode(
    empty_database_dsn: str, postgres_server: Any
) -> None:
    await apply_migrations(empty_database_dsn, storage_mode="postgres")

    # Later runs in auto mode must not switch to TimescaleDB even where the server has it.
    assert await apply_migrations(empty_database_dsn) == []
    async with await psycopg.AsyncConnection.connect(empty_database_dsn) as conn:
        info = await detect_storage_mode(conn)
        cur = await conn.execute("SELECT count(*) FROM pg_extension WHERE extname='timescaledb'")
        row = await cur.fetchone()
    assert info.mode == "postgres"
    assert info.timescaledb_version is None
    assert row == (0,)


@pytest.mark.timescaledb
async def test_timescaledb_mode_builds_hypertables(
    migrated_database: str, postgres_server: Any
) -> None:
    if not postgres_server.timescaledb_enabled:
        pytest.skip("the session's server runs plain PostgreSQL")
    rows = await fetch(
        migrated_database,
        "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1",
    )
    assert [r["hypertable_name"] for r in rows] == ["events", "telemetry"]
    async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
        info = await detect_storage_mode(conn)
        assert await ensure_partitions(conn) == 0  # chunks are TimescaleDB's business
    assert info.mode == "timescaledb"
    assert info.timescaledb_version
    # This project's build is the Apache-2 edition: no compression, no policies.
    assert info.edition == "apache"
    assert not info.has_compression
    assert not info.has_policies


async def test_postgres_mode_partitions_and_default_catches_everything(
    migrated_postgres_database: str,
) -> None:
    dsn = migrated_postgres_database
    # The migration made a week of days either side of the day it ran, which is not today when
    # the session's database was migrated before midnight (UTC) and this test runs after it.
    (migrated,) = await fetch(dsn, "SELECT applied_at FROM schema_migrations WHERE version = 2")
    migrated_on = migrated["applied_at"].astimezone(UTC).date()
    for table in ("telemetry", "events"):
        rows = await fetch(
            dsn,
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            (table,),
        )
        names = {r["relname"] for r in rows}
        assert f"{table}_default" in names
        for offset in range(-7, 8):
            day = migrated_on + timedelta(days=offset)
            assert f"{table}_p{day:%Y%m%d}" in names

    long_ago = datetime.now(UTC) - timedelta(days=60)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO telemetry (time, vin, boot_id, seq) VALUES (%s, 'V', 'b', 1), "
            "(%s, 'V', 'b', 2), (now(), 'V', 'b', 3)",
            (long_ago, long_ago + timedelta(seconds=1)),
        )
        cur = await conn.execute(
            "SELECT seq, tableoid::regclass::text, (time AT TIME ZONE 'UTC')::date "
            "FROM telemetry ORDER BY seq"
        )
        placed = await cur.fetchall()
        assert placed[0][1] == placed[1][1] == "telemetry_default"
        today = placed[2][2]  # the database's UTC day now
        assert placed[2][1] == f"telemetry_p{today:%Y%m%d}"

        # Creating that day later moves its rows out of DEFAULT; nothing is lost.
        cur = await conn.execute(
            "SELECT tgw_ensure_partitions('telemetry', %s, %s)",
            (long_ago, long_ago + timedelta(seconds=1)),
        )
        assert await cur.fetchone() == (1,)
        cur = await conn.execute("SELECT seq, tableoid::regclass::text FROM telemetry ORDER BY seq")
        moved = await cur.fetchall()
        assert [r[0] for r in moved] == [1, 2, 3]
        assert moved[0][1] == moved[1][1] == f"telemetry_p{long_ago:%Y%m%d}"

        # Ahead of time, idempotently: 3 more days for each table (more if the migration ran
        # on an earlier day), then nothing.
        more = (today + timedelta(days=10) - (migrated_on + timedelta(days=7))).days
        assert await ensure_partitions(conn, days_ahead=10) == 2 * more
        assert await ensure_partitions(conn, days_ahead=10) == 0


async def test_partitions_use_utc_days_whatever_the_session_time_zone(
    migrated_postgres_database: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(
        migrated_postgres_database, autocommit=True
    ) as conn:
        await conn.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14
        await conn.execute(
            "SELECT tgw_ensure_partitions('events', '2020-03-01 00:00+00', '2020-03-02 00:00+00')"
        )
        await conn.execute("SET TimeZone = 'UTC'")
        cur = await conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_class c "
            "WHERE c.relname LIKE 'events_p2020%' AND c.relkind = 'r'"
        )
        rows = await cur.fetchall()
    assert rows == [
        (
            "events_p20200301",
            "FOR VALUES FROM ('2020-03-01 00:00:00+00') TO ('2020-03-02 00:00:00+00')",
        )
    ]


async def test_checksum_change_is_refused(empty_database_dsn: str, tmp_path: Path) -> None:
    shutil.copytree(PACKAGE_MIGRATIONS, tmp_path / "m")
    directory = tmp_path / "m"
    await apply_migrations(empty_database_dsn, directory=directory)
    core = directory / "0001_core.sql"
    core.write_text(core.read_text() + "\n-- an innocent-looking edit\n")

    with pytest.raises(MigrationChecksumError, match=r"0001_core\.sql changed after"):
        await apply_migrations(empty_database_dsn, directory=directory)
    status = await migration_status(empty_database_dsn, directory=directory)
    assert any("0001_core.sql changed" in p for p in status.problems)


async def test_failed_migration_is_rolled_back(empty_database_dsn: str, tmp_path: Path) -> None:
    shutil.copytree(PACKAGE_MIGRATIONS, tmp_path / "m")
    directory = tmp_path / "m"
    (directory / "9000_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )

    with pytest.raises(MigrationError, match=r"9000_broken\.sql failed and was rolled back"):
        await apply_migrations(empty_database_dsn, directory=directory)

    tables = await user_tables(empty_database_dsn)
    assert "half_done" not in tables
    assert "telemetry" in tables  # the good migrations before it stay applied
    rows = await fetch(empty_database_dsn, "SELECT max(version) AS v FROM schema_migrations")
    newest_shipped = max(m.version for m in discover_migrations())
    assert rows == [{"v": newest_shipped}]


async def test_concurrent_migrations_are_safe(empty_database_dsn: str) -> None:
    runs = await asyncio.gather(*(apply_migrations(empty_database_dsn) for _ in range(4)))

    applied = [ids for ids in runs if ids]
    assert len(applied) == 1  # one run did the work, the others waited and found nothing
    rows = await fetch(empty_database_dsn, "SELECT version FROM schema_migrations")
    assert len(rows) == len(discover_migrations())


async def test_switching_mode_of_a_migrated_database_is_refused(
    migrated_database: str, storage_mode: StorageMode
) -> None:
    other: StorageMode = "postgres" if storage_mode == "timescaledb" else "timescaledb"
    with pytest.raises(StorageModeError, match="cannot switch"):
        await apply_migrations(migrated_database, storage_mode=other)


async def test_forcing_timescaledb_without_it_is_refused(
    empty_database_dsn: str, postgres_server: Any
) -> None:
    if postgres_server.timescaledb_enabled:
        pytest.skip("the session's server has TimescaleDB")
    with pytest.raises(StorageModeError, match="timescaledb"):
        await apply_migrations(empty_database_dsn, storage_mode="timescaledb")
    assert "schema_migrations" not in await user_tables(empty_database_dsn) or not await fetch(
        empty_database_dsn, "SELECT 1 FROM schema_migrations"
    )


async def test_unreachable_database_is_a_storage_error() -> None:
    with pytest.raises(
        StorageError, match=r"cannot connect to the database at 127\.0\.0\.1:1/"
    ) as err:
        await apply_migrations("postgresql://nobody:hunter2@127.0.0.1:1/nothing")
    assert "hunter2" not in str(err.value)


async def test_template_copies_are_independent(
    migrated_database: str, migrated_postgres_database: str
) -> None:
    for dsn in (migrated_database, migrated_postgres_database):
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("INSERT INTO vehicles (vin) VALUES ('WVWZZZ1JZXW000001')")
            # A copied database migrates nothing new, and works.
        assert await apply_migrations(dsn) == []
