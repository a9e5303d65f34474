"""Migrated databases for integration tests, fast: migrate once, copy per test.

Each storage mode is migrated once per session into a template database; every test then
gets its own `CREATE DATABASE ... TEMPLATE` copy (tens of milliseconds) and it is dropped
afterwards. Fixtures:

- `migrated_database`: the session's storage mode (TimescaleDB when the session server has it,
  i.e. unless TGW_TEST_STORAGE selects plain PostgreSQL).
- `migrated_postgres_database`: plain PostgreSQL mode forced, on whichever server runs, so one
  TimescaleDB session also covers the partitioned path.
- `migrated_database_any_mode`: `(mode, dsn)`, parametrized over both storage modes (only
  plain PostgreSQL when the session has no TimescaleDB).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import psycopg
import pytest
from psycopg import sql

from gateway.devstack import timescaledb_installed
from gateway.errors import DevStackError
from gateway.storage import StorageMode, apply_migrations

# How long a template copy may wait for stray connections to the template to go away.
_CLONE_DEADLINE_S = 15.0


class _Server(Protocol):
    """What these fixtures use of tests/conftest.py's `postgres_server`."""

    @property
    def timescaledb_enabled(self) -> bool: ...

    def dsn(self, dbname: str = ...) -> str: ...

    def create_database(self, name: str, template: str | None = None) -> str: ...

    def drop_database(self, name: str) -> None: ...


class MigratedTemplates:
    """One migrated template database per storage mode, made on first use."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._templates: dict[StorageMode, str] = {}
        self._lock = asyncio.Lock()

    async def _admin(self, query: sql.SQL | sql.Composed, params: tuple[object, ...] = ()) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._server.dsn("postgres"), autocommit=True
        ) as conn:
            await conn.execute(query, params)

    async def _forget(self, name: str) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._server.dsn("postgres"), autocommit=True
        ) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if await cur.fetchone() is None:
                return
            # A template database cannot be dropped until it is an ordinary one again.
            await conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
        self._server.drop_database(name)

    async def _disconnect_all(self, name: str) -> None:
        # TimescaleDB runs a background scheduler connected to each database that has the
        # extension; CREATE DATABASE ... TEMPLATE refuses while anyone is connected.
        await self._admin(
            sql.SQL(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()"
            ),
            (name,),
        )

    async def template(self, mode: StorageMode) -> str:
        """The name of the migrated template for `mode`."""
        async with self._lock:
            if mode in self._templates:
                return self._templates[mode]
            name = f"tgw_template_{mode}"
            await self._forget(name)
            dsn = self._server.create_database(name)
            await apply_migrations(dsn, storage_mode=mode)
            # No connections from now on (the scheduler's included): it is only copied.
            await self._admin(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
            await self._disconnect_all(name)
            self._templates[mode] = name
            return name

    async def clone(self, mode: StorageMode, name: str) -> str:
        """Create database `name` as a copy of the migrated template; return its DSN."""
        template = await self.template(mode)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLONE_DEADLINE_S
        while True:
            try:
                return self._server.create_database(name, template=template)
            except DevStackError as exc:
                in_use = isinstance(exc.__cause__, psycopg.errors.ObjectInUse)
                if not in_use or loop.time() > deadline:
                    raise
            await self._disconnect_all(template)
            await asyncio.sleep(0.05)

    async def drop_all(self) -> None:
        for name in self._templates.values():
            await self._forget(name)
        self._templates.clear()


@pytest.fixture(scope="session")
async def migrated_templates(postgres_server: _Server) -> AsyncIterator[MigratedTemplates]:
    templates = MigratedTemplates(postgres_server)
    yield templates
    await templates.drop_all()


async def _fresh_copy(
    server: _Server, templates: MigratedTemplates, mode: StorageMode
) -> AsyncIterator[str]:
    name = f"tgw_test_{uuid.uuid4().hex[:16]}"
    dsn = await templates.clone(mode, name)
    try:
        yield dsn
    finally:
        server.drop_database(name)


@pytest.fixture
async def migrated_database(
    postgres_server: _Server,
    migrated_templates: MigratedTemplates,
    storage_mode: StorageMode,
) -> AsyncIterator[str]:
    """DSN of a fresh database migrated in the session's storage mode."""
    async for dsn in _fresh_copy(postgres_server, migrated_templates, storage_mode):
        yield dsn


@pytest.fixture
async def migrated_postgres_database(
    postgres_server: _Server, migrated_templates: MigratedTemplates
) -> AsyncIterator[str]:
    """DSN of a fresh database migrated in plain PostgreSQL mode (forced)."""
    async for dsn in _fresh_copy(postgres_server, migrated_templates, "postgres"):
        yield dsn


def _session_is_plain_postgres() -> bool:
    # Mirrors tests/conftest.py's choice (its stash key is private): used at collection time,
    # before any fixture exists, to avoid generating a duplicate plain-PostgreSQL case.
    requested = os.environ.get("TGW_TEST_STORAGE", "").strip().lower()
    return requested == "postgres" or not timescaledb_installed()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "migrated_database_any_mode" in metafunc.fixturenames:
        modes = ["postgres"] if _session_is_plain_postgres() else ["timescaledb", "postgres"]
        metafunc.parametrize("migrated_database_any_mode", modes, indirect=True)


@pytest.fixture
async def migrated_database_any_mode(
    request: pytest.FixtureRequest,
    postgres_server: _Server,
    migrated_templates: MigratedTemplates,
) -> AsyncIterator[tuple[StorageMode, str]]:
    """(storage mode, DSN), parametrized: TimescaleDB (when the session has it) and plain
    PostgreSQL (forced on a TimescaleDB server; the session's own mode otherwise)."""
    mode: StorageMode = request.param
    async for dsn in _fresh_copy(postgres_server, migrated_templates, mode):
        yield mode, dsn
