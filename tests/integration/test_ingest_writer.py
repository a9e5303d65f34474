"""BatchWriter on the real database: straight COPY, the staged path for repeats, last_seen."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.ingest.batch import IngestBatch
from gateway.ingest.inbound import InboundMessage
from gateway.ingest.maintenance import mark_stale_vehicles
from gateway.ingest.writer import BatchWriter
from schemas import TopicKind, decode_uplink, vehicle_topic
from tests.integration.ingest_support import fetch, now_ms

VIN = "WBAUE11040E654321"
START_MS = now_ms()


def batch(seqs: list[int], *, received_at_ms: int | None = None) -> IngestBatch:
    received = received_at_ms or now_ms()
    result = IngestBatch()
    for seq in seqs:
        document = {
            "v": 1,
            "vin": VIN,
            "boot_id": "boot-w",
            # A repeated message repeats its timestamp: part of the idempotency key.
            "samples": [{"seq": seq, "ts": START_MS + seq, "signals": {"speed": seq}}],
        }
        topic = vehicle_topic(VIN, TopicKind.TELEMETRY)
        message = InboundMessage(topic, json.dumps(document).encode(), seq, 1, 1, received)
        result.add(message, decode_uplink(topic, message.payload, received_at_ms=received))
    return result


@pytest.fixture
async def pool(migrated_database: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        migrated_database, min_size=1, max_size=2, configure=BatchWriter.prepare_connection
    ) as opened:
        yield opened


async def test_new_rows_go_straight_in_and_repeats_are_counted_not_stored(
    pool: AsyncConnectionPool[Any], migrated_database: str
) -> None:
    writer = BatchWriter(pool)
    first = await writer.write(batch([1, 2, 3]))
    assert (first.telemetry_inserted, first.telemetry_duplicates) == (3, 0)
    # Two stored before and one repeated within the batch: the staged path sorts it out.
    again = await writer.write(batch([2, 3, 4, 4]))
    assert (again.telemetry_inserted, again.telemetry_duplicates) == (1, 3)
    rows = await fetch(
        migrated_database, "SELECT seq FROM telemetry WHERE vin = %s ORDER BY seq", (VIN,)
    )
    assert rows == [(1,), (2,), (3,), (4,)]
    (latest,) = await fetch(
        migrated_database, "SELECT seq, speed FROM latest_state WHERE vin = %s", (VIN,)
    )
    assert latest == (4, 4.0)


async def test_last_seen_is_rewritten_only_once_it_moved_by_the_resolution(
    pool: AsyncConnectionPool[Any], migrated_database: str
) -> None:
    writer = BatchWriter(pool, last_seen_resolution_s=10)
    start = now_ms()
    last_seen = "SELECT last_seen_at FROM vehicles WHERE vin = %s"
    await writer.write(batch([1], received_at_ms=start))
    ((first,),) = await fetch(migrated_database, last_seen, (VIN,))
    await writer.write(batch([2], received_at_ms=start + 5_000))
    assert await fetch(migrated_database, last_seen, (VIN,)) == [(first,)]
    await writer.write(batch([3], received_at_ms=start + 10_000))
    ((moved,),) = await fetch(migrated_database, last_seen, (VIN,))
    assert (moved - first).total_seconds() == 10


async def test_stale_marking_allows_for_the_last_seen_resolution(
    pool: AsyncConnectionPool[Any], migrated_database: str
) -> None:
    await fetch(
        migrated_database,
        "INSERT INTO vehicles (vin, online, last_seen_at) "
        "VALUES (%s, true, now() - interval '8 seconds') RETURNING vin",
        (VIN,),
    )
    # Silent for 8 s by the database's account: the car may have spoken 3 s ago.
    assert await mark_stale_vehicles(pool, stale_after_s=5, last_seen_resolution_s=5) == 0
    assert await mark_stale_vehicles(pool, stale_after_s=5) == 1


def message(
    vin: str, samples: list[tuple[int, int, dict[str, object]]], *, redelivered: bool = False
) -> tuple[InboundMessage, bytes]:
    document = {
        "v": 1,
        "vin": vin,
        "boot_id": "boot-m",
        "samples": [{"seq": seq, "ts": ts, "signals": signals} for seq, ts, signals in samples],
    }
    payload = json.dumps(document).encode()
    topic = vehicle_topic(vin, TopicKind.TELEMETRY)
    return InboundMessage(topic, payload, 1, 1, 1, now_ms(), redelivered=redelivered), payload


async def write(writer: BatchWriter, *messages: InboundMessage) -> None:
    result = IngestBatch()
    for inbound in messages:
        outcome = decode_uplink(inbound.topic, inbound.payload, received_at_ms=now_ms())
        result.add(inbound, outcome)
    await writer.write(result)


async def test_an_old_sample_in_a_batch_does_not_overwrite_newer_stored_state(
    pool: AsyncConnectionPool[Any], migrated_database: str
) -> None:
    vin, t = "WBAUE11040E654322", now_ms() - 60_000
    writer = BatchWriter(pool)
    stored, _ = message(vin, [(5, t + 5_000, {"fuel": 70.0, "speed": 0.0})])
    await write(writer, stored)
    # One batch: a backlog sample older than the stored state, carrying fuel, and a newer
    # sample without fuel. The newer moves the state; the older one's fuel must not.
    late, _ = message(vin, [(3, t + 3_000, {"fuel": 20.0, "door_fl_open": True})])
    newer, _ = message(vin, [(6, t + 6_000, {"speed": 12.0})])
    await write(writer, late, newer)

    (state,) = await fetch(
        migrated_database,
        "SELECT seq, fuel, speed, door_fl_open FROM latest_state WHERE vin = %s",
        (vin,),
    )
    assert state == (6, 70.0, 12.0, None)
    ((rows,),) = await fetch(
        migrated_database, "SELECT count(*) FROM telemetry WHERE vin = %s", (vin,)
    )
    assert rows == 3


async def test_a_redelivered_dead_letter_is_kept_once(
    pool: AsyncConnectionPool[Any], migrated_database: str
) -> None:
    writer = BatchWriter(pool)
    topic = vehicle_topic("WBAUE11040E654323", TopicKind.TELEMETRY)
    garbage = b"{not json"
    first = InboundMessage(topic, garbage, 1, 1, 1, now_ms())
    await write(writer, first)
    # The batch committed, the acknowledgement was lost: the broker sends it again (DUP).
    await write(writer, first._replace(mid=2, generation=2, redelivered=True))
    # The car sends the same bad bytes once more, a new message: kept.
    await write(writer, first._replace(mid=3, generation=2))

    rows = await fetch(
        migrated_database, "SELECT reason FROM dead_letters WHERE topic = %s", (topic,)
    )
    assert rows == [("not_json",), ("not_json",)]
