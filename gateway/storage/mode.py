"""Storage mode: TimescaleDB hypertables, or native PostgreSQL partitioning.

The mode is chosen once, when a database is first migrated, and recorded in
`schema_migrations`; from then on the database's own record wins, because its
telemetry table was built for that mode and cannot change shape in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import structlog

from gateway.errors import StorageError
from gateway.storage._db import AnyConnection, fetch_one, fetch_value

__all__ = [
    "Edition",
    "StorageInfo",
    "StorageMode",
    "StorageModeError",
    "StorageModeSetting",
    "TimescaleSupport",
    "choose_storage_mode",
    "detect_storage_mode",
    "log_storage_mode",
    "probe_timescaledb",
    "recorded_storage_mode",
]

StorageMode = Literal["timescaledb", "postgres"]
"""How time-series tables are built: hypertables, or native range partitions."""
StorageModeSetting = Literal["auto", "timescaledb", "postgres"]
"""What an operator asks for; `auto` means TimescaleDB when the server can load it."""
Edition = Literal["apache", "community"]
"""TimescaleDB's licence: `apache` lacks compression, policies and continuous aggregates."""

STORAGE_MODES: tuple[StorageMode, ...] = get_args(StorageMode)

_log = structlog.get_logger(__name__)


class StorageModeError(StorageError):
    """The requested storage mode cannot be used with this server or database."""


@dataclass(frozen=True, slots=True)
class TimescaleSupport:
    """What the server and the current database offer of TimescaleDB.

    Attributes:
        available_version: version the server could install (None: not installed on the server).
        installed_version: version created in this database (None: extension not created here).
        preloaded: whether `shared_preload_libraries` loads timescaledb (required to use it).
        license: the `timescaledb.license` setting, once the extension is loaded in this database.
    """

    available_version: str | None
    installed_version: str | None
    preloaded: bool
    license: str | None

    @property
    def usable(self) -> bool:
        """TimescaleDB can be used here: already created, or installable and preloaded."""
        return self.installed_version is not None or (
            self.available_version is not None and self.preloaded
        )


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """The storage mode in use for one database, and what its TimescaleDB can do.

    Attributes:
        mode: `timescaledb` (hypertables) or `postgres` (native daily range partitions).
        timescaledb_version: the extension's version in use (None in `postgres` mode).
        edition: `apache` or `community` (None in `postgres` mode, or not yet known because the
            extension is not created in this database yet).
        has_compression: native compression can be enabled (community edition only).
        has_policies: background policies (retention, compression, refresh) can be added.
    """

    mode: StorageMode
    timescaledb_version: str | None
    edition: Edition | None
    has_compression: bool
    has_policies: bool


async def probe_timescaledb(conn: AnyConnection) -> TimescaleSupport:
    """Ask the server what it offers of TimescaleDB (reads catalogs only, changes nothing)."""
    row = await fetch_one(
        conn,
        """
        SELECT
            (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
            (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
            current_setting('shared_preload_libraries'),
            current_setting('timescaledb.license', true)
        """,
    )
    assert row is not None
    available, installed, preload, license_ = row
    libraries = {lib.strip().strip('"') for lib in str(preload).split(",")}
    return TimescaleSupport(
        available_version=available,
        installed_version=installed,
        preloaded="timescaledb" in libraries,
        license=license_ or None,
    )


async def recorded_storage_mode(conn: AnyConnection) -> StorageMode | None:
    """The storage mode this database was migrated in, or None if it was never migrated."""
    if not await fetch_value(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    mode = await fetch_value(
        conn, "SELECT storage_mode FROM schema_migrations ORDER BY version LIMIT 1"
    )
    if mode is None:
        return None
    for known in STORAGE_MODES:
        if mode == known:
            return known
    raise StorageModeError(f"schema_migrations records an unknown storage mode {mode!r}")


def choose_storage_mode(
    setting: StorageModeSetting,
    support: TimescaleSupport,
    recorded: StorageMode | None,
) -> StorageMode:
    """Decide the storage mode for a database; raise `StorageModeError` when impossible.

    Args:
        setting: what the operator asked for (`auto` picks TimescaleDB when usable).
        support: what the server offers (see `probe_timescaledb`).
        recorded: the mode the database was already migrated in, if any; it always wins,
            and an explicit setting that contradicts it is refused.
    """
    if recorded is not None:
        if setting not in ("auto", recorded):
            raise StorageModeError(
                f"this database was migrated in {recorded!r} storage mode and cannot switch to "
                f"{setting!r}; use storage mode 'auto' or {recorded!r}, or migrate a new database"
            )
        if recorded == "timescaledb" and support.installed_version is None:
            raise StorageModeError(
                "this database was migrated in 'timescaledb' storage mode but the timescaledb "
                "extension is missing from it; restore the extension before starting"
            )
        return recorded
    if setting == "postgres":
        return "postgres"
    if setting == "timescaledb":
        if support.available_version is None and support.installed_version is None:
            raise StorageModeError(
                "storage mode 'timescaledb' was requested but the server has no timescaledb "
                "extension installed; install it (scripts/build_timescaledb.sh) or use storage "
                "mode 'auto' or 'postgres'"
            )
        if not support.preloaded:
            raise StorageModeError(
                "storage mode 'timescaledb' was requested but the server does not preload it; "
                "add shared_preload_libraries = 'timescaledb' to postgresql.conf and restart, "
                "or use storage mode 'auto' or 'postgres'"
            )
        return "timescaledb"
    return "timescaledb" if support.usable and support.preloaded else "postgres"


def _edition(license_: str | None) -> Edition | None:
    # 'timescale' is the Timescale License (community edition); 'apache' the Apache-2 build.
    if license_ == "apache":
        return "apache"
    if license_ == "timescale":
        return "community"
    return None


async def _function_exists(conn: AnyConnection, name: str) -> bool:
    return bool(await fetch_value(conn, "SELECT to_regproc(%s) IS NOT NULL", (name,)))


async def detect_storage_mode(
    conn: AnyConnection,
    setting: StorageModeSetting = "auto",
) -> StorageInfo:
    """Describe the storage mode in use (or, before the first migration, the one to be used).

    The edition comes from the `timescaledb.license` setting, which exists once the extension
    is created in the database; compression and policies are reported only for the community
    edition, and only if their functions exist (Apache builds ship the functions as stubs that
    fail, so existence alone proves nothing).

    Args:
        conn: a connection to the database in question.
        setting: the operator's storage-mode setting (see `choose_storage_mode`).
    """
    support = await probe_timescaledb(conn)
    mode = choose_storage_mode(setting, support, await recorded_storage_mode(conn))
    if mode == "postgres":
        return StorageInfo(
            mode="postgres",
            timescaledb_version=None,
            edition=None,
            has_compression=False,
            has_policies=False,
        )
    edition = _edition(support.license)
    community = edition == "community"
    return StorageInfo(
        mode="timescaledb",
        timescaledb_version=support.installed_version or support.available_version,
        edition=edition,
        has_compression=community and await _function_exists(conn, "compress_chunk"),
        has_policies=community and await _function_exists(conn, "add_retention_policy"),
    )


def log_storage_mode(info: StorageInfo, *, database: str | None = None) -> None:
    """Emit the one log line that says which storage mode is in use."""
    _log.info(
        "storage.mode",
        mode=info.mode,
        database=database,
        timescaledb_version=info.timescaledb_version,
        edition=info.edition,
        compression=info.has_compression,
        policies=info.has_policies,
    )
