"""Migration discovery and planning, without a database."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import MigrationError
from gateway.storage import AppliedMigration, MigrationChecksumError, StorageMode
from gateway.storage.migrate import (
    MigrationVersion,
    Variant,
    discover_migrations,
    plan_migrations,
)

pytestmark = pytest.mark.unit


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def applied(
    version: int,
    filename: str,
    text: str,
    variant: Variant = "common",
    mode: StorageMode = "postgres",
) -> AppliedMigration:
    return AppliedMigration(
        version=version,
        name=filename.split("_", 1)[1].split(".", maxsplit=1)[0],
        variant=variant,
        filename=filename,
        checksum=hashlib.sha256(text.encode()).hexdigest(),
        storage_mode=mode,
        applied_at=datetime.now(UTC),
        duration_ms=1,
    )


@pytest.fixture
def three(tmp_path: Path) -> list[MigrationVersion]:
    return discover_migrations(
        write(
            tmp_path / "m",
            {
                "0001_core.sql": "CREATE TABLE a ();",
                "0002_series.timescaledb.sql": "-- hypertable",
                "0002_series.postgres.sql": "-- partitions",
                "0003_more.sql": "CREATE TABLE b ();",
                "README.txt": "not a migration",
            },
        )
    )


def test_the_package_migrations_are_well_formed() -> None:
    versions = discover_migrations()
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert versions[0].for_mode("postgres").filename == "0001_core.sql"
    telemetry = versions[1]
    assert telemetry.for_mode("timescaledb").filename == "0002_telemetry.timescaledb.sql"
    assert telemetry.for_mode("postgres").filename == "0002_telemetry.postgres.sql"


def test_discovery_picks_the_variant_per_mode(three: list[MigrationVersion]) -> None:
    assert [v.for_mode("timescaledb").id for v in three] == [
        "0001_core",
        "0002_series.timescaledb",
        "0003_more",
    ]
    assert [v.for_mode("postgres").variant for v in three] == ["common", "postgres", "common"]
    core = three[0].for_mode("postgres")
    assert core.checksum == hashlib.sha256(b"CREATE TABLE a ();").hexdigest()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_core.sql": ""}, "misnamed"),
        ({"0001_Core.sql": ""}, "misnamed"),
        ({"0001_core.mysql.sql": ""}, "misnamed"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "used twice"),
        ({"0001_a.postgres.sql": "", "0001_b.timescaledb.sql": ""}, "used twice"),
        ({"0001_a.postgres.sql": ""}, "no counterpart"),
        ({"0001_a.sql": "", "0001_a.postgres.sql": ""}, "both a common file and mode variants"),
    ],
)
def test_discovery_refuses_bad_sets(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        discover_migrations(write(tmp_path / "m", files))


def test_plan_on_a_fresh_database_is_everything(three: list[MigrationVersion]) -> None:
    plan = plan_migrations(three, [], "postgres")
    assert [m.filename for m in plan] == [
        "0001_core.sql",
        "0002_series.postgres.sql",
        "0003_more.sql",
    ]


def test_plan_skips_what_is_applied(three: list[MigrationVersion]) -> None:
    done = [
        applied(1, "0001_core.sql", "CREATE TABLE a ();", mode="timescaledb"),
        applied(2, "0002_series.timescaledb.sql", "-- hypertable", "timescaledb", "timescaledb"),
    ]
    assert [m.id for m in plan_migrations(three, done, "timescaledb")] == ["0003_more"]


def test_plan_refuses_a_changed_file(three: list[MigrationVersion]) -> None:
    done = [applied(1, "0001_core.sql", "CREATE TABLE a (id int);")]
    with pytest.raises(MigrationChecksumError, match=r"0001_core\.sql changed after it was"):
        plan_migrations(three, done, "postgres")


def test_plan_refuses_an_unknown_applied_version(three: list[MigrationVersion]) -> None:
    done = [
        applied(1, "0001_core.sql", "CREATE TABLE a ();"),
        applied(2, "0002_series.postgres.sql", "-- partitions", "postgres"),
        applied(3, "0003_more.sql", "CREATE TABLE b ();"),
        applied(4, "0004_future.sql", "-- from a newer tgw"),
    ]
    with pytest.raises(MigrationError, match="upgrade tgw"):
        plan_migrations(three, done, "postgres")


def test_plan_refuses_a_gap_filled_later(three: list[MigrationVersion]) -> None:
    done = [
        applied(1, "0001_core.sql", "CREATE TABLE a ();"),
        applied(3, "0003_more.sql", "CREATE TABLE b ();"),
    ]
    with pytest.raises(MigrationError, match="give it a number above"):
        plan_migrations(three, done, "postgres")


def test_plan_refuses_a_variant_that_disappeared(tmp_path: Path) -> None:
    versions = discover_migrations(write(tmp_path / "m", {"0001_core.sql": "x"}))
    done = [applied(1, "0001_core.postgres.sql", "x", "postgres")]
    with pytest.raises(MigrationError, match="no such file any more"):
        plan_migrations(versions, done, "postgres")
