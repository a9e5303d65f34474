"""The SQL of gateway.storage.sql, and the tables' own rules, on a real database.

Every test runs in both storage modes: the session's own and plain PostgreSQL forced.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.storage import StorageMode, sql

pytestmark = pytest.mark.integration

VIN_A = "WVWZZZ1JZXW000001"
VIN_B = "WVWZZZ1JZXW000002"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def sample(vin: str, seq: int, seconds: float, **signals: Any) -> dict[str, Any]:
    """A telemetry row as a dict; unnamed signals are None (not carried)."""
    row: dict[str, Any] = {
        "time": T0 + timedelta(seconds=seconds),
        "vin": vin,
        "boot_id": "boot-1",
        "seq": seq,
        "received_at": datetime.now(UTC),
    }
    row |= {name: signals.get(name) for name in sql.SIGNAL_COLUMNS}
    return row


async def connect(dsn: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    return await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row)


async def store_batch(conn: psycopg.AsyncConnection[Any], rows: list[dict[str, Any]]) -> int:
    """The ingest's staged write path for one batch; returns how many rows were new."""
    await conn.execute(sql.CREATE_STAGES)
    async with conn.transaction():
        async with conn.cursor().copy(sql.COPY_TELEMETRY_STAGE) as copy:
            copy.set_types(list(sql.TELEMETRY_COPY_TYPES))
            for row in rows:
                await copy.write_row(tuple(row[c] for c in sql.TELEMETRY_COLUMNS))
        cur = await conn.execute(sql.INSERT_TELEMETRY_FROM_STAGE)
        stored = cur.rowcount
        await conn.execute(sql.UPSERT_LATEST_STATE_FROM_STAGE)
    return stored


async def latest(conn: psycopg.AsyncConnection[Any], vin: str) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM latest_state WHERE vin = %s", (vin,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def scalar(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


@pytest.fixture
async def db(
    migrated_database_any_mode: tuple[StorageMode, str],
) -> Any:
    _, dsn = migrated_database_any_mode
    async with await connect(dsn) as conn:
        yield conn


async def test_column_lists_match_the_tables(db: psycopg.AsyncConnection[Any]) -> None:
    async def columns(table: str) -> tuple[str, ...]:
        cur = await db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
        return tuple(r["attname"] for r in await cur.fetchall())

    assert await columns("telemetry") == sql.TELEMETRY_COLUMNS
    assert await columns("events") == sql.EVENT_COLUMNS
    assert await columns("latest_state") == sql.LATEST_STATE_COLUMNS


async def test_staged_insert_stores_nothing_twice(db: psycopg.AsyncConnection[Any]) -> None:
    batch = [sample(VIN_A, seq, seq, fuel=50.0 - seq, lat=48.1) for seq in range(1, 6)]
    batch.append(sample(VIN_B, 1, 0.5, fuel=10.0))

    assert await store_batch(db, batch) == 6
    # Redelivered whole, then partly again with duplicates inside one batch.
    assert await store_batch(db, batch) == 0
    again = [batch[0], batch[0], sample(VIN_A, 6, 6, fuel=44.0), sample(VIN_A, 6, 6, fuel=44.0)]
    assert await store_batch(db, again) == 1

    assert await scalar(db, "SELECT count(*) FROM telemetry") == 7
    state = await latest(db, VIN_A)
    assert (state["seq"], state["fuel"], state["lat"]) == (6, 44.0, 48.1)


async def test_latest_state_moves_only_forward(db: psycopg.AsyncConnection[Any]) -> None:
    await store_batch(db, [sample(VIN_A, 10, 10, fuel=40.0, locked=True, lat=48.0)])
    # Late data (a backlog from a car park) lands in history, not in the state.
    await store_batch(db, [sample(VIN_A, 3, 3, fuel=80.0, locked=False, lat=47.0)])
    state = await latest(db, VIN_A)
    assert (state["seq"], state["fuel"], state["locked"], state["lat"]) == (10, 40.0, True, 48.0)
    assert await scalar(db, "SELECT count(*) FROM telemetry") == 2

    # A newer sample that carries only some signals keeps the others.
    await store_batch(db, [sample(VIN_A, 11, 11, speed=30.0)])
    state = await latest(db, VIN_A)
    assert (state["seq"], state["speed"], state["fuel"], state["locked"]) == (11, 30.0, 40.0, True)
    assert state["time"] == T0 + timedelta(seconds=11)


async def test_latest_state_merges_a_batch_per_signal(db: psycopg.AsyncConnection[Any]) -> None:
    await store_batch(db, [sample(VIN_A, 5, 5, fuel=50.0, lat=48.0, lon=11.0)])

    await store_batch(
        db,
        [
            sample(VIN_A, 3, 3, fuel=30.0, door_fl_open=True),  # older than the state: ignored
            sample(VIN_A, 7, 7, fuel=None, lat=48.5, lon=None),  # newest fix, no fuel reading
            sample(VIN_A, 6, 6, fuel=45.0, lon=11.5),  # newer than the state, older than seq 7
            sample(VIN_B, 1, 1, soc=80.0),
        ],
    )

    a = await latest(db, VIN_A)
    assert (a["seq"], a["time"]) == (7, T0 + timedelta(seconds=7))
    assert (a["fuel"], a["lat"], a["lon"], a["door_fl_open"]) == (45.0, 48.5, 11.5, None)
    b = await latest(db, VIN_B)
    assert (b["seq"], b["soc"], b["fuel"]) == (1, 80.0, None)


async def test_staged_events_store_nothing_twice(db: psycopg.AsyncConnection[Any]) -> None:
    events = [
        (T0, VIN_A, "boot-1", 1, "door_opened", json.dumps({"door": "fl"}), T0),
        (T0 + timedelta(seconds=1), VIN_A, "boot-1", 2, "low_fuel", "{}", T0),
    ]

    async def store(rows: list[tuple[Any, ...]]) -> int:
        await db.execute(sql.CREATE_STAGES)
        async with db.transaction():
            async with db.cursor().copy(sql.COPY_EVENTS_STAGE) as copy:
                for row in rows:
                    await copy.write_row(row)
            cur = await db.execute(sql.INSERT_EVENTS_FROM_STAGE)
            return cur.rowcount

    assert await store(events) == 2
    assert await store(events + events) == 0
    cur = await db.execute("SELECT type, data FROM events ORDER BY seq")
    assert [(r["type"], r["data"]) for r in await cur.fetchall()] == [
        ("door_opened", {"door": "fl"}),
        ("low_fuel", {}),
    ]


async def test_dead_letters_kept_and_a_redelivery_kept_once(
    db: psycopg.AsyncConnection[Any],
) -> None:
    garbage = b"\x00\xffgarbage"
    letter = {
        "received_at": T0,
        "topic": "tgw/v1/vehicles/x/telemetry",
        "vin": None,
        "reason": "not_json",
        "detail": "Expecting value: line 1 column 1",
        "payload": garbage,
        "payload_size": 9,
        "payload_sha256": hashlib.sha256(garbage).digest(),
    }
    row = tuple(letter[c] for c in sql.DEAD_LETTER_COLUMNS)
    # A car that sends the same bad bytes twice: both kept.
    async with db.transaction(), db.cursor().copy(sql.COPY_DEAD_LETTERS) as copy:
        await copy.write_row(row)
        await copy.write_row(row)
    async with db.transaction():
        # The broker delivers it again (DUP): the same bytes are kept already.
        cur = await db.execute(sql.INSERT_DEAD_LETTER_UNLESS_KEPT, letter)
        assert cur.rowcount == 0
        # Another topic's redelivery with the same bytes is another message.
        other = letter | {"topic": "tgw/v1/vehicles/y/telemetry"}
        cur = await db.execute(sql.INSERT_DEAD_LETTER_UNLESS_KEPT, other)
        assert cur.rowcount == 1
    cur = await db.execute("SELECT topic, reason, payload, payload_size FROM dead_letters")
    assert sorted(tuple(r.values()) for r in await cur.fetchall()) == [
        ("tgw/v1/vehicles/x/telemetry", "not_json", garbage, 9),
        ("tgw/v1/vehicles/x/telemetry", "not_json", garbage, 9),
        ("tgw/v1/vehicles/y/telemetry", "not_json", garbage, 9),
    ]


async def test_table_rules(db: psycopg.AsyncConnection[Any]) -> None:
    await db.set_autocommit(True)
    with pytest.raises(psycopg.errors.CheckViolation, match="vin_format"):
        await db.execute("INSERT INTO vehicles (vin) VALUES ('WVWZZZ1JZXW00000O')")
    await db.execute("INSERT INTO vehicles (vin, capabilities) VALUES (%s, %s)", (VIN_A, ["lock"]))

    async def command(key: str | None, by: str = "alice") -> None:
        await db.execute(
            "INSERT INTO commands (vin, action, requested_by, idempotency_key, expires_at) "
            "VALUES (%s, 'lock', %s, %s, now() + interval '30 seconds')",
            (VIN_A, by, key),
        )

    await command("k1")
    await command("k1", by="bob")  # keys are unique per requester
    await command(None)
    await command(None)  # no key: no uniqueness
    with pytest.raises(psycopg.errors.UniqueViolation, match="commands_idempotency_key"):
        await command("k1")
    with pytest.raises(psycopg.errors.CheckViolation, match="command_status_known"):
        await db.execute("UPDATE commands SET status = 'done'")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await db.execute(
            "INSERT INTO commands (vin, action, requested_by, expires_at) "
            "VALUES ('WVWZZZ1JZXW999999', 'lock', 'alice', now())"
        )

    await db.execute(
        "INSERT INTO command_transitions (command_id, status, actor) "
        "SELECT id, 'sent', 'gateway' FROM commands LIMIT 1"
    )
    await db.execute(
        "INSERT INTO audit_log (actor, action, target) VALUES ('alice', 'lock', %s)", (VIN_A,)
    )
    for statement in (
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await db.execute(statement)
    assert await scalar(db, "SELECT count(*) FROM audit_log") == 1
