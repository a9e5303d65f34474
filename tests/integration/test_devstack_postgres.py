"""The private PostgreSQL cluster: start, connect, stop/start keeps data, TimescaleDB preload."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from gateway.devstack import PostgresServer, port_is_free, timescaledb_installed
from gateway.errors import DevStackError


def test_session_server_serves_fresh_databases(
    postgres_server: PostgresServer, empty_database_dsn: str, storage_mode: str
) -> None:
    with psycopg.connect(empty_database_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    assert tables == (0,)
    assert postgres_server.timescaledb_enabled == (storage_mode == "timescaledb")
    assert preload is not None
    assert ("timescaledb" in preload[0]) == postgres_server.timescaledb_enabled


@pytest.mark.timescaledb
def test_timescaledb_extension_loads(empty_database_dsn: str) -> None:
    with psycopg.connect(empty_database_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")
        conn.execute("CREATE TABLE t (time timestamptz NOT NULL, v double precision)")
        conn.execute("SELECT create_hypertable('t', 'time')")
        telemetry = conn.execute("SHOW timescaledb.telemetry_level").fetchone()
    assert telemetry == ("off",)


def test_stop_and_start_keep_data_and_port(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", timescaledb=False, durable=False, password="pw-1")
    with server:
        dsn = server.create_database("keep")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
        port = server.port
        server.stop()
        server.stop()  # idempotent
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)
        server.start()
        assert server.port == port
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
        # Recovers from a crash (immediate shutdown), too.
        server.stop(mode="immediate")
        server.start()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
        server.drop_database("keep")
        assert not server.database_exists("keep")
    assert not server.running
    assert port_is_free(port)


def test_password_is_required_when_set(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg", timescaledb=False, durable=False, password="s3cret") as pg:
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        wrong = pg.dsn().replace("s3cret", "guess")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong, connect_timeout=2)


def test_port_in_use_is_a_clear_error(postgres_server: PostgresServer, tmp_path: Path) -> None:
    other = PostgresServer(tmp_path / "pg", postgres_server.port, timescaledb=False)
    with pytest.raises(DevStackError, match=f"port {postgres_server.port} .* is in use"):
        other.start()


@pytest.mark.skipif(timescaledb_installed(), reason="TimescaleDB is installed here")
def test_requiring_missing_timescaledb_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DevStackError, match="TimescaleDB was requested"):
        PostgresServer(tmp_path / "pg", timescaledb=True)
