"""The SQL constants agree with their column tuples (the database side is an integration test)."""

from __future__ import annotations

import re

import pytest

from gateway.storage import sql

pytestmark = pytest.mark.unit


def column_list(statement: str, after: str) -> tuple[str, ...]:
    """The parenthesised, comma-separated names right after `after` in `statement`."""
    match = re.search(re.escape(after) + r"\s*\(([^)]*)\)", statement)
    assert match, f"{after!r} not found"
    return tuple(name.strip() for name in match.group(1).split(","))


def select_list(statement: str) -> tuple[str, ...]:
    match = re.search(r"SELECT\s+(.*?)\s+FROM", statement, re.DOTALL)
    assert match
    return tuple(name.strip() for name in match.group(1).split(","))


@pytest.mark.parametrize(
    ("statement", "after", "columns"),
    [
        (sql.COPY_TELEMETRY, "COPY telemetry", sql.TELEMETRY_COLUMNS),
        (sql.COPY_TELEMETRY_STAGE, "COPY tgw_stage_telemetry", sql.TELEMETRY_COLUMNS),
        (sql.INSERT_TELEMETRY_FROM_STAGE, "INSERT INTO telemetry", sql.TELEMETRY_COLUMNS),
        (sql.COPY_EVENTS_STAGE, "COPY tgw_stage_events", sql.EVENT_COLUMNS),
        (sql.INSERT_EVENTS_FROM_STAGE, "INSERT INTO events", sql.EVENT_COLUMNS),
        (sql.COPY_DEAD_LETTERS, "COPY dead_letters", sql.DEAD_LETTER_COLUMNS),
        (sql.INSERT_DEAD_LETTER_UNLESS_KEPT, "INSERT INTO dead_letters", sql.DEAD_LETTER_COLUMNS),
        (
            sql.UPSERT_LATEST_STATE_FROM_STAGE,
            "INSERT INTO latest_state AS ls",
            sql.LATEST_STATE_COLUMNS,
        ),
        (
            sql.UPSERT_LATEST_STATE_ONE_PER_CAR,
            "INSERT INTO latest_state AS ls",
            sql.LATEST_STATE_COLUMNS,
        ),
    ],
)
def test_column_lists(statement: str, after: str, columns: tuple[str, ...]) -> None:
    assert column_list(statement, after) == columns


def test_insert_from_stage_selects_what_it_inserts() -> None:
    assert select_list(sql.INSERT_TELEMETRY_FROM_STAGE) == sql.TELEMETRY_COLUMNS
    assert select_list(sql.INSERT_EVENTS_FROM_STAGE) == sql.EVENT_COLUMNS


def test_copy_types_cover_every_column() -> None:
    assert len(sql.TELEMETRY_COPY_TYPES) == len(sql.TELEMETRY_COLUMNS)


@pytest.mark.parametrize(
    "statement", [sql.UPSERT_LATEST_STATE_FROM_STAGE, sql.UPSERT_LATEST_STATE_ONE_PER_CAR]
)
def test_latest_state_merges_every_signal_and_only_moves_forward(statement: str) -> None:
    for signal in sql.SIGNAL_COLUMNS:
        assert f"{signal} = COALESCE(EXCLUDED.{signal}, ls.{signal})" in statement
    assert statement.rstrip().endswith("WHERE ls.time <= EXCLUDED.time")


def test_batch_merge_aggregates_every_signal() -> None:
    statement = sql.UPSERT_LATEST_STATE_FROM_STAGE
    for signal in sql.SIGNAL_COLUMNS:
        assert f"FILTER (WHERE {signal} IS NOT NULL))[1] AS {signal}" in statement
        assert f"COALESCE(n.{signal}, o.{signal})" in statement


def test_dead_letter_insert_names_every_column_as_a_parameter() -> None:
    params = re.findall(r"%\((\w+)\)s", sql.INSERT_DEAD_LETTER_UNLESS_KEPT)
    assert set(params) == set(sql.DEAD_LETTER_COLUMNS)
