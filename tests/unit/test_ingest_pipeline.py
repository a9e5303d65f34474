"""IngestPipeline's own logic: ack only after commit, retry, isolate refused rows.

The broker and the database are replaced by in-memory ports here; the same
pipeline runs against the real ones in tests/integration/test_ingest_*.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from gateway.config import IngestSettings
from gateway.ingest.batch import IngestBatch
from gateway.ingest.inbound import InboundMessage
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.pipeline import IngestPipeline
from gateway.ingest.writer import BatchRefusedError, StorageUnavailableError, WriteResult
from schemas import vehicle_topic
from schemas.topics import TopicKind

VIN = "WBAUE11040E123456"
NOW_MS = 1_790_000_000_000


class ListSource:
    def __init__(self, messages: list[InboundMessage]) -> None:
        self.messages = messages
        self.acked: list[InboundMessage] = []

    async def receive(self, max_messages: int, max_delay_s: float) -> list[InboundMessage]:
        return self.take_ready(max_messages)

    def take_ready(self, max_messages: int) -> list[InboundMessage]:
        taken, self.messages = self.messages[:max_messages], self.messages[max_messages:]
        return taken

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        self.acked.extend(messages)
        return len(messages)

    @property
    def pending(self) -> int:
        return len(self.messages)


class RecordingSink:
    """Commits into lists; can be told to be down for a while or to refuse a seq."""

    def __init__(self, *, down_for: int = 0, refuse_seq: int | None = None) -> None:
        self.down_for = down_for
        self.refuse_seq = refuse_seq
        self.committed: list[IngestBatch] = []
        self.attempts = 0

    async def write(self, batch: IngestBatch) -> WriteResult:
        self.attempts += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise StorageUnavailableError("database unavailable: connection refused")
        if self.refuse_seq is not None and any(
            row[3] == self.refuse_seq for row in batch.telemetry
        ):
            raise BatchRefusedError("database refused the batch: value out of range")
        self.committed.append(batch)
        return WriteResult(
            len(batch.telemetry), 0, len(batch.events), 0, len(batch.dead_letters), 0, 0.0
        )

    async def registered(self, vins: list[str]) -> set[str]:
        return set()


def message(seq: int) -> InboundMessage:
    document = {
        "v": 1,
        "vin": VIN,
        "boot_id": "boot",
        "samples": [{"seq": seq, "ts": NOW_MS, "signals": {"speed": 1.0}}],
    }
    return InboundMessage(
        topic=vehicle_topic(VIN, TopicKind.TELEMETRY),
        payload=json.dumps(document).encode(),
        mid=seq,
        qos=1,
        generation=1,
        received_at_ms=NOW_MS,
    )


def pipeline(source: ListSource, sink: RecordingSink, **settings: object) -> IngestPipeline:
    options = {"retry_initial_s": 0.001, "retry_max_s": 0.002, **settings}
    return IngestPipeline(source, sink, IngestSettings.model_validate(options), IngestMetrics())


async def test_acknowledges_only_what_was_committed() -> None:
    source = ListSource([message(i) for i in range(5)])
    sink = RecordingSink()
    await pipeline(source, sink).process(source.take_ready(3))
    assert [m.mid for m in source.acked] == [0, 1, 2]
    assert sum(len(b.telemetry) for b in sink.committed) == 3


async def test_database_outage_retries_same_batch_without_acking_meanwhile() -> None:
    source = ListSource([message(i) for i in range(4)])
    sink = RecordingSink(down_for=3)
    await pipeline(source, sink).process(source.take_ready(4))
    assert sink.attempts == 4
    assert len(sink.committed) == 1
    assert len(source.acked) == 4


async def test_refused_row_is_isolated_into_a_dead_letter_and_the_rest_commits() -> None:
    source = ListSource([message(i) for i in range(8)])
    sink = RecordingSink(refuse_seq=5)
    await pipeline(source, sink).process(source.take_ready(8))
    stored = sorted(row[3] for b in sink.committed for row in b.telemetry)
    letters = [d for b in sink.committed for d in b.dead_letters]
    assert stored == [0, 1, 2, 3, 4, 6, 7]
    assert len(letters) == 1
    assert letters[0].reason == "schema_violation"
    assert "database refused" in letters[0].detail
    assert sorted(m.mid for m in source.acked) == list(range(8))


async def test_unregistered_vehicle_is_refused_when_registration_is_required() -> None:
    source = ListSource([message(1)])
    sink = RecordingSink()
    await pipeline(source, sink, require_registration=True).process(source.take_ready(1))
    (letter,) = sink.committed[0].dead_letters
    assert letter.reason == "unknown_vehicle"
    assert sink.committed[0].telemetry == []


@pytest.mark.parametrize("batch_size", [1, 3, 100])
async def test_run_drains_everything_received_after_stop(batch_size: int) -> None:
    source = ListSource([message(i) for i in range(10)])
    sink = RecordingSink()
    ingest = pipeline(source, sink, batch_max_messages=batch_size)
    ingest.stop()
    await ingest.run()
    assert len(source.acked) == 10
