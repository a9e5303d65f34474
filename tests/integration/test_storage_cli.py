"""`tgw db migrate` and `tgw db status` against a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from gateway.cli.db import app
from gateway.errors import StorageError
from gateway.storage import StorageMode
from gateway.storage.migrate import discover_migrations

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(autouse=True)
def _keep_logging_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # The commands configure structlog for the process (and it caches loggers on first use);
    # in a test process that would silence INFO lines for every later test's capture_logs.
    monkeypatch.setattr("gateway.cli.db.configure_logging", lambda *_a, **_k: None)


def run_cli(*args: str) -> Any:
    # The commands run their own event loop; keep it off the test's loop thread.
    return runner.invoke(app, list(args))


async def invoke(*args: str) -> Any:
    return await asyncio.to_thread(run_cli, *args)


async def test_migrate_then_status(empty_database_dsn: str, storage_mode: StorageMode) -> None:
    first = await invoke("migrate", "--dsn", empty_database_dsn)
    assert first.exit_code == 0, first.output
    shipped = discover_migrations()
    assert f"applied {len(shipped)} migration(s): 0001_core, 0002_telemetry." in first.output
    assert f"{shipped[-1].version:04d}_{shipped[-1].name}" in first.output
    assert f"storage mode: {storage_mode}" in first.output

    again = await invoke("migrate", "--dsn", empty_database_dsn)
    assert again.exit_code == 0, again.output
    assert "schema up to date" in again.output

    status = await invoke("status", "--dsn", empty_database_dsn)
    assert status.exit_code == 0, status.output
    assert "0001_core.sql" in status.output
    assert "pending: none" in status.output


async def test_migrate_forced_postgres_mode(empty_database_dsn: str) -> None:
    result = await invoke("migrate", "--dsn", empty_database_dsn, "--storage-mode", "postgres")
    assert result.exit_code == 0, result.output
    assert "storage mode: postgres" in result.output


async def test_status_of_a_fresh_database_lists_pending(empty_database_dsn: str) -> None:
    result = await invoke("status", "--dsn", empty_database_dsn)
    assert result.exit_code == 0, result.output
    assert "applied: none" in result.output
    assert "0001_core.sql" in result.output
    assert "run `tgw db migrate`" in result.output


async def test_status_reports_problems(empty_database_dsn: str) -> None:
    await invoke("migrate", "--dsn", empty_database_dsn)
    async with await psycopg.AsyncConnection.connect(empty_database_dsn, autocommit=True) as conn:
        await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")

    result = await invoke("status", "--dsn", empty_database_dsn)
    assert result.exit_code == 1
    assert "0001_core.sql changed after it was applied" in result.output


async def test_unreachable_database_is_a_gateway_error() -> None:
    result = await invoke("migrate", "--dsn", "postgresql://tgw:pw@127.0.0.1:1/tgw")
    # main() turns GatewayError into "error: ..." and exit 1; here we see the exception.
    assert isinstance(result.exception, StorageError)
    assert "cannot connect to the database at 127.0.0.1:1/tgw" in str(result.exception)
