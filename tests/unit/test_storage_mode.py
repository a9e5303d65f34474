"""Choosing the storage mode from the setting, the server and the database's record."""

from __future__ import annotations

import pytest

from gateway.storage import StorageMode, StorageModeError, StorageModeSetting
from gateway.storage.mode import TimescaleSupport, choose_storage_mode

pytestmark = pytest.mark.unit

NONE = TimescaleSupport(None, None, preloaded=False, license=None)
INSTALLED_NOT_PRELOADED = TimescaleSupport("2.19.3", None, preloaded=False, license=None)
READY = TimescaleSupport("2.19.3", None, preloaded=True, license=None)
CREATED = TimescaleSupport("2.19.3", "2.19.3", preloaded=True, license="apache")


@pytest.mark.parametrize(
    ("setting", "support", "expected"),
    [
        ("auto", NONE, "postgres"),
        ("auto", INSTALLED_NOT_PRELOADED, "postgres"),
        ("auto", READY, "timescaledb"),
        ("auto", CREATED, "timescaledb"),
        ("postgres", READY, "postgres"),
        ("postgres", NONE, "postgres"),
        ("timescaledb", READY, "timescaledb"),
    ],
)
def test_fresh_database(
    setting: StorageModeSetting, support: TimescaleSupport, expected: StorageMode
) -> None:
    assert choose_storage_mode(setting, support, recorded=None) == expected


@pytest.mark.parametrize(
    ("support", "advice"),
    [
        (NONE, "no timescaledb extension installed"),
        (INSTALLED_NOT_PRELOADED, "shared_preload_libraries"),
    ],
)
def test_forcing_timescaledb_where_it_cannot_run(support: TimescaleSupport, advice: str) -> None:
    with pytest.raises(StorageModeError, match=advice):
        choose_storage_mode("timescaledb", support, recorded=None)


def test_the_recorded_mode_wins_over_auto() -> None:
    assert choose_storage_mode("auto", READY, recorded="postgres") == "postgres"
    assert choose_storage_mode("auto", CREATED, recorded="timescaledb") == "timescaledb"
    assert choose_storage_mode("postgres", READY, recorded="postgres") == "postgres"


def test_contradicting_the_recorded_mode_is_refused() -> None:
    with pytest.raises(StorageModeError, match="cannot switch to 'timescaledb'"):
        choose_storage_mode("timescaledb", READY, recorded="postgres")
    with pytest.raises(StorageModeError, match="cannot switch to 'postgres'"):
        choose_storage_mode("postgres", CREATED, recorded="timescaledb")


def test_a_timescaledb_database_without_the_extension_is_refused() -> None:
    with pytest.raises(StorageModeError, match="extension is missing"):
        choose_storage_mode("auto", READY, recorded="timescaledb")
