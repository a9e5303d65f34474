"""Storage: the PostgreSQL/TimescaleDB schema, its migrations and the storage mode.

Public surface (see docs/storage.md):

- `apply_migrations(dsn, storage_mode="auto")`: bring a database up to date (`tgw db migrate`).
- `migration_status(dsn)`: applied / pending migrations and the storage mode (`tgw db status`).
- `detect_storage_mode(conn)`: TimescaleDB (and which edition) or plain PostgreSQL.
- `ensure_partitions(conn, days_ahead=7)`: daily partitions ahead, plain PostgreSQL mode only.
- `gateway.storage.sql`: SQL the ingest and API run against these tables.
"""

from __future__ import annotations

from gateway.storage.migrate import (
    AppliedMigration,
    Migration,
    MigrationChecksumError,
    MigrationStatus,
    apply_migrations,
    connect,
    discover_migrations,
    migration_status,
)
from gateway.storage.mode import (
    Edition,
    StorageInfo,
    StorageMode,
    StorageModeError,
    StorageModeSetting,
    detect_storage_mode,
    log_storage_mode,
)
from gateway.storage.partitions import ensure_partitions

__all__ = [
    "AppliedMigration",
    "Edition",
    "Migration",
    "MigrationChecksumError",
    "MigrationStatus",
    "StorageInfo",
    "StorageMode",
    "StorageModeError",
    "StorageModeSetting",
    "apply_migrations",
    "connect",
    "detect_storage_mode",
    "discover_migrations",
    "ensure_partitions",
    "log_storage_mode",
    "migration_status",
]
