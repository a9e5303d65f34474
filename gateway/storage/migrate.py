"""Versioned SQL migrations: discover, check, apply (`tgw db migrate`).

Files live in `gateway/storage/migrations/` and are named `NNNN_name.sql` (one file for both
storage modes) or `NNNN_name.timescaledb.sql` + `NNNN_name.postgres.sql` (a pair, one per
mode; the runner applies the one matching the database's storage mode). Each applied file is
recorded in `schema_migrations` with its sha256; a recorded file that changed afterwards
stops the runner, because the database no longer matches what the code believes.

Two gateways migrating at once are safe: the runner holds a session advisory lock for the
whole run, and each migration runs in its own transaction.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from gateway.errors import MigrationError, StorageError
from gateway.storage._db import AnyConnection, fetch_all, fetch_value
from gateway.storage.mode import (
    StorageInfo,
    StorageMode,
    StorageModeSetting,
    choose_storage_mode,
    detect_storage_mode,
    log_storage_mode,
    probe_timescaledb,
    recorded_storage_mode,
)
from gateway.storage.partitions import ensure_partitions

__all__ = [
    "MIGRATION_LOCK_KEY",
    "AppliedMigration",
    "Migration",
    "MigrationChecksumError",
    "MigrationStatus",
    "MigrationVersion",
    "Variant",
    "apply_migrations",
    "connect",
    "describe_dsn",
    "discover_migrations",
    "migration_status",
    "plan_migrations",
]

Variant = Literal["common", "timescaledb", "postgres"]
"""Which storage mode a migration file is for; `common` files serve both."""

MIGRATION_LOCK_KEY = 0x7467775F6D696772
"""Session advisory lock held while migrating ("tgw_migr" in ASCII)."""

_FILENAME_RE = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<variant>timescaledb|postgres))?\.sql$"
)

_CONNECT_TIMEOUT_S = 10

_log = structlog.get_logger(__name__)

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version      integer     PRIMARY KEY,
    name         text        NOT NULL,
    variant      text        NOT NULL CHECK (variant IN ('common', 'timescaledb', 'postgres')),
    filename     text        NOT NULL,
    checksum     text        NOT NULL,
    storage_mode text        NOT NULL CHECK (storage_mode IN ('timescaledb', 'postgres')),
    applied_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  integer     NOT NULL
)
"""


class MigrationChecksumError(MigrationError):
    """An applied migration's file changed since it was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    Attributes:
        version: its number (the `NNNN` prefix); migrations apply in ascending order.
        name: the part after the number, e.g. `telemetry`.
        variant: `common`, or the storage mode this file is for.
        filename: e.g. `0002_telemetry.postgres.sql`.
        sql: the file's text.
        checksum: sha256 of the file's bytes, hex.
    """

    version: int
    name: str
    variant: Variant
    filename: str
    sql: str = field(repr=False)
    checksum: str

    @property
    def id(self) -> str:
        """The filename without `.sql`, as reported by `apply_migrations`."""
        return self.filename.removesuffix(".sql")


@dataclass(frozen=True, slots=True)
class MigrationVersion:
    """All files of one version: a `common` file, or one file per storage mode."""

    version: int
    name: str
    variants: Mapping[Variant, Migration]

    def for_mode(self, mode: StorageMode) -> Migration:
        """The file to apply in `mode`."""
        return self.variants.get("common") or self.variants[mode]


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """One row of `schema_migrations`."""

    version: int
    name: str
    variant: Variant
    filename: str
    checksum: str
    storage_mode: StorageMode
    applied_at: datetime
    duration_ms: int


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What `tgw db status` shows: applied and pending migrations, problems, storage mode."""

    storage: StorageInfo
    applied: list[AppliedMigration]
    pending: list[Migration]
    problems: list[str]


def _checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def discover_migrations(directory: Traversable | None = None) -> list[MigrationVersion]:
    """Read and check the migration files, sorted by version.

    Args:
        directory: where the `.sql` files are; defaults to the package's `migrations/`.

    Raises:
        MigrationError: a file is misnamed, a version is used twice, or a mode pair is
            incomplete.
    """
    if directory is None:
        directory = resources.files("gateway.storage") / "migrations"
    found: dict[int, dict[Variant, Migration]] = {}
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        match = _FILENAME_RE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is misnamed: use NNNN_name.sql or "
                "NNNN_name.timescaledb.sql + NNNN_name.postgres.sql (lower case, digits, _)"
            )
        data = entry.read_bytes()
        version = int(match["version"])
        variant: Variant = match["variant"] or "common"  # type: ignore[assignment]  # regex allows only these
        migration = Migration(
            version=version,
            name=match["name"],
            variant=variant,
            filename=entry.name,
            sql=data.decode("utf-8"),
            checksum=_checksum(data),
        )
        files = found.setdefault(version, {})
        if variant in files or (files and migration.name != next(iter(files.values())).name):
            others = ", ".join(m.filename for m in files.values())
            raise MigrationError(
                f"migration version {version:04d} is used twice ({others}, {entry.name}); "
                "give the newer one the next free number"
            )
        files[variant] = migration
    versions: list[MigrationVersion] = []
    for version in sorted(found):
        files = found[version]
        if "common" in files and len(files) > 1:
            raise MigrationError(
                f"migration {version:04d} has both a common file and mode variants; "
                "use either one .sql file or a .timescaledb.sql + .postgres.sql pair"
            )
        if "common" not in files and set(files) != {"timescaledb", "postgres"}:
            (only,) = files.values()
            raise MigrationError(
                f"migration {only.filename} has no counterpart for the other storage mode; "
                "add both NNNN_name.timescaledb.sql and NNNN_name.postgres.sql"
            )
        name = next(iter(files.values())).name
        versions.append(MigrationVersion(version=version, name=name, variants=files))
    return versions


def _compare(
    available: Iterable[MigrationVersion], applied: Iterable[AppliedMigration], mode: StorageMode
) -> tuple[list[Migration], list[str]]:
    """Pending migrations (in order) and problems that forbid applying them."""
    by_version = {v.version: v for v in available}
    applied_by_version = {a.version: a for a in applied}
    problems: list[str] = []
    for row in applied_by_version.values():
        known = by_version.get(row.version)
        if known is None:
            problems.append(
                f"migration {row.filename} is applied in the database but unknown to this tgw "
                "version; upgrade tgw (the database was migrated by a newer one)"
            )
            continue
        current = known.variants.get(row.variant)
        if current is None:
            problems.append(
                f"migration {row.filename} was applied but this tgw has no such file any more "
                f"(it has {', '.join(m.filename for m in known.variants.values())})"
            )
        elif current.checksum != row.checksum:
            problems.append(
                f"migration {row.filename} changed after it was applied (sha256 "
                f"{row.checksum[:12]}... in the database, {current.checksum[:12]}... on disk); "
                "never edit an applied migration: restore the file and add a new migration"
            )
    newest_applied = max(applied_by_version, default=0)
    pending: list[Migration] = []
    for version in sorted(by_version):
        if version in applied_by_version:
            continue
        migration = by_version[version].for_mode(mode)
        if version < newest_applied:
            problems.append(
                f"migration {migration.filename} is pending but the newer {newest_applied:04d} is "
                "already applied; give it a number above every applied migration"
            )
        pending.append(migration)
    return pending, problems


def plan_migrations(
    available: Iterable[MigrationVersion], applied: Iterable[AppliedMigration], mode: StorageMode
) -> list[Migration]:
    """The migrations still to apply in `mode`, in order.

    Raises:
        MigrationChecksumError: an applied file changed since.
        MigrationError: any other mismatch between the files and the database's record.
    """
    pending, problems = _compare(available, applied, mode)
    checksum_problems = [p for p in problems if "changed after it was applied" in p]
    if checksum_problems:
        raise MigrationChecksumError("; ".join(checksum_problems))
    if problems:
        raise MigrationError("; ".join(problems))
    return pending


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or '?'}"


async def connect(dsn: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[TupleRow]:
    """Open a connection, translating failures into `StorageError` with advice."""
    try:
        conninfo = dsn
        # libpq waits forever for an unreachable host unless told otherwise.
        if not conninfo_to_dict(dsn).get("connect_timeout"):
            conninfo = make_conninfo(dsn, connect_timeout=_CONNECT_TIMEOUT_S)
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise StorageError(
            f"cannot connect to the database at {describe_dsn(dsn)} "
            f"({str(exc).strip().splitlines()[0]}): is PostgreSQL running, and is the DSN right?"
        ) from exc
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"the database DSN is malformed: {exc}") from exc


async def _read_applied(conn: AnyConnection) -> list[AppliedMigration]:
    if not await fetch_value(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return []
    rows = await fetch_all(
        conn,
        """
        SELECT version, name, variant, filename, checksum, storage_mode, applied_at, duration_ms
        FROM schema_migrations ORDER BY version
        """,
    )
    return [AppliedMigration(*row) for row in rows]


async def _create_extension(conn: AnyConnection) -> None:
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            "creating the timescaledb extension needs a superuser; ask the database owner to "
            "run 'CREATE EXTENSION timescaledb' in this database, or use storage mode 'postgres'"
        ) from exc
    except psycopg.Error as exc:
        raise MigrationError(f"could not create the timescaledb extension: {exc}") from exc
    _log.info("storage.extension_created", extension="timescaledb")


async def _apply_one(conn: AnyConnection, migration: Migration, mode: StorageMode) -> None:
    started = time.perf_counter()
    try:
        async with conn.transaction():
            # No parameters: psycopg sends the file with the simple protocol, many statements.
            await conn.execute(migration.sql.encode("utf-8"))
            await conn.execute(
                """
                INSERT INTO schema_migrations
                    (version, name, variant, filename, checksum, storage_mode, duration_ms)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    migration.version,
                    migration.name,
                    migration.variant,
                    migration.filename,
                    migration.checksum,
                    mode,
                    round((time.perf_counter() - started) * 1000),
                ),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.filename} failed and was rolled back: {exc}"
        ) from exc
    _log.info(
        "storage.migration_applied",
        migration=migration.filename,
        duration_ms=round((time.perf_counter() - started) * 1000),
    )


async def _lock(conn: AnyConnection) -> None:
    if not await fetch_value(conn, "SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)):
        _log.info("storage.migration_lock_wait")
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))


async def apply_migrations(
    dsn: str,
    *,
    storage_mode: StorageModeSetting = "auto",
    directory: Traversable | None = None,
) -> list[str]:
    """Bring the database's schema up to date; return the ids of the migrations applied now.

    Idempotent: a second run applies nothing and returns `[]`. On a fresh database it picks
    the storage mode (see `choose_storage_mode`), creates the timescaledb extension when that
    mode is chosen, and records the mode. In `postgres` mode it also creates the daily
    partitions for the week behind and the week ahead. Logs the storage mode in use.

    Args:
        dsn: libpq connection string or URL of the database to migrate.
        storage_mode: `auto`, or force `timescaledb` / `postgres` (refused if the database was
            already migrated in the other mode, or if the server cannot do it).
        directory: migration files to use instead of the package's own (tests).

    Raises:
        MigrationChecksumError: an applied migration's file changed.
        MigrationError: a migration failed (it was rolled back) or files and database disagree.
        StorageModeError: the requested storage mode is impossible here.
        StorageError: the database cannot be reached.
    """
    available = discover_migrations(directory)
    async with await connect(dsn) as conn:
        try:
            pending = await _migrate(conn, available, storage_mode)
            info = await detect_storage_mode(conn, storage_mode)
        except psycopg.Error as exc:
            raise StorageError(f"migrating {describe_dsn(dsn)} failed: {exc}") from exc
    log_storage_mode(info, database=describe_dsn(dsn))
    return [m.id for m in pending]


async def _migrate(
    conn: AnyConnection, available: list[MigrationVersion], storage_mode: StorageModeSetting
) -> list[Migration]:
    # A session lock: closing the connection (normally, or by a crash) releases it.
    await _lock(conn)
    await conn.execute(_CREATE_SCHEMA_MIGRATIONS)
    support = await probe_timescaledb(conn)
    mode = choose_storage_mode(storage_mode, support, await recorded_storage_mode(conn))
    pending = plan_migrations(available, await _read_applied(conn), mode)
    if mode == "timescaledb" and support.installed_version is None:
        await _create_extension(conn)
    for migration in pending:
        await _apply_one(conn, migration, mode)
    if mode == "postgres":
        await ensure_partitions(conn, days_ahead=7, days_behind=7)
    return pending


async def migration_status(dsn: str, *, directory: Traversable | None = None) -> MigrationStatus:
    """Read which migrations are applied and pending, and the storage mode (changes nothing).

    Mismatches between files and database (changed, unknown or out-of-order migrations) are
    listed in `problems`, not raised, so that `tgw db status` can show them all; a storage mode
    that cannot work raises `StorageModeError`.
    """
    available = discover_migrations(directory)
    async with await connect(dsn) as conn:
        try:
            applied = await _read_applied(conn)
            storage = await detect_storage_mode(conn)
        except psycopg.Error as exc:
            raise StorageError(f"reading the schema of {describe_dsn(dsn)} failed: {exc}") from exc
        pending, problems = _compare(available, applied, storage.mode)
    return MigrationStatus(storage=storage, applied=applied, pending=pending, problems=problems)
