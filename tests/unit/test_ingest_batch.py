"""IngestBatch: classified messages become the rows of one transaction."""

from __future__ import annotations

import hashlib
import json

from gateway.ingest.batch import IngestBatch
from gateway.ingest.inbound import InboundMessage
from schemas import SIGNAL_NAMES, decode_uplink, vehicle_topic
from schemas.topics import TopicKind

VIN = "WBAUE11040E123456"
NOW_MS = 1_790_000_000_000


def inbound(kind: TopicKind, document: object, *, retained: bool = False) -> InboundMessage:
    return InboundMessage(
        topic=vehicle_topic(VIN, kind),
        payload=json.dumps(document).encode(),
        mid=1,
        qos=1,
        generation=1,
        received_at_ms=NOW_MS,
        retained=retained,
    )


def add(batch: IngestBatch, message: InboundMessage) -> None:
    batch.add(message, decode_uplink(message.topic, message.payload, received_at_ms=NOW_MS))


def telemetry(*samples: tuple[int, int, dict[str, object]]) -> dict[str, object]:
    return {
        "v": 1,
        "vin": VIN,
        "boot_id": "boot-1",
        "samples": [{"seq": seq, "ts": ts, "signals": signals} for seq, ts, signals in samples],
    }


def test_telemetry_samples_become_rows_in_column_order() -> None:
    batch = IngestBatch()
    add(batch, inbound(TopicKind.TELEMETRY, telemetry((1, NOW_MS - 1000, {"speed": 30.5}))))
    (row,) = batch.telemetry
    assert row[1:4] == (VIN, "boot-1", 1)
    signals = dict(zip(SIGNAL_NAMES, row[5:], strict=True))
    assert signals["speed"] == 30.5
    assert signals["fuel"] is None


def test_latest_candidates_are_the_newest_sample_and_older_ones_with_other_signals() -> None:
    batch = IngestBatch()
    add(
        batch,
        inbound(
            TopicKind.TELEMETRY,
            telemetry(
                (3, NOW_MS - 1000, {"speed": 50.0}),
                (2, NOW_MS - 2000, {"speed": 10.0, "fuel": 40.0}),
            ),
        ),
    )
    # Nothing that seq 2 or 3 lacks: cannot move the state.
    add(batch, inbound(TopicKind.TELEMETRY, telemetry((1, NOW_MS - 3000, {"fuel": 55.0}))))
    # Same time as seq 3, higher seq: the newest.
    add(batch, inbound(TopicKind.TELEMETRY, telemetry((4, NOW_MS - 1000, {"locked": True}))))

    assert [row[3] for row in batch.latest_candidates()] == [4, 3, 2]


def test_latest_candidate_of_a_car_with_one_sample_is_that_sample() -> None:
    batch = IngestBatch()
    add(batch, inbound(TopicKind.TELEMETRY, telemetry((9, NOW_MS - 1000, {"speed": 5.0}))))
    assert batch.latest_candidates() == batch.telemetry


def test_rejected_message_becomes_dead_letter_with_bounded_payload() -> None:
    batch = IngestBatch(dead_letter_payload_bytes=10)
    message = InboundMessage(
        topic=vehicle_topic(VIN, TopicKind.TELEMETRY),
        payload=b"not json at all, and long",
        mid=7,
        qos=1,
        generation=1,
        received_at_ms=NOW_MS,
    )
    add(batch, message)
    (letter,) = batch.dead_letters
    assert letter.payload_sha256 == hashlib.sha256(b"not json at all, and long").digest()
    assert not letter.redelivered
    assert letter.reason == "not_json"
    assert letter.payload == b"not json a"
    assert letter.payload_size == len(message.payload)
    assert batch.messages == [message]  # acknowledged after commit like any other


def test_will_goes_offline_at_receive_time_not_its_stale_timestamp() -> None:
    batch = IngestBatch()
    will = {
        "v": 1,
        "vin": VIN,
        "online": False,
        "reason": "connection_lost",
        "ts": NOW_MS - 86_400_000,
    }
    add(batch, inbound(TopicKind.STATUS, will))
    (status,) = batch.statuses
    assert not status.online
    assert status.changed_at.timestamp() * 1000 == NOW_MS


def test_retained_status_does_not_count_as_seen() -> None:
    batch = IngestBatch()
    birth = {
        "v": 1,
        "vin": VIN,
        "online": True,
        "reason": "connected",
        "ts": NOW_MS - 5000,
        "boot_id": "b",
        "capabilities": ["lock", "unlock"],
    }
    add(batch, inbound(TopicKind.STATUS, birth, retained=True))
    assert batch.statuses[0].capabilities == ("lock", "unlock")
    assert batch.last_seen == {}


def test_event_data_keeps_only_type_specific_fields() -> None:
    batch = IngestBatch()
    event = {
        "v": 1,
        "vin": VIN,
        "boot_id": "b",
        "seq": 9,
        "ts": NOW_MS,
        "type": "door_opened",
        "door": "fl",
    }
    add(batch, inbound(TopicKind.EVENTS, event))
    (row,) = batch.events
    assert row[4] == "door_opened"
    assert json.loads(row[5]) == {"door": "fl"}
