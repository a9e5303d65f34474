"""The store-and-forward queue: order, acknowledgement, bound and overflow, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_sim.errors import OutboxError
from device_sim.outbox import OutboxKind, OutboxStore

pytestmark = pytest.mark.unit

VIN = "WBA12345678901234"
OTHER = "WVW12345678901234"


def _store(tmp_path: Path) -> OutboxStore:
    store = OutboxStore(tmp_path / "queue.sqlite")
    store.open()
    return store


def _append(store: OutboxStore, vin: str, seq: int, *, max_records: int = 100) -> int:
    outbox = store.vehicle(vin, max_records=max_records)
    ts = 1_700_000_000_000 + seq
    body = f'{{"s":{seq}}}'
    record = outbox.append(OutboxKind.SAMPLE, boot_id="boot1", seq=seq, ts=ts, body=body)
    return record.id


def test_rows_come_back_oldest_first_per_car(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for seq in range(5):
        _append(store, VIN, seq)
        _append(store, OTHER, 100 + seq)
    outbox = store.vehicle(VIN, max_records=100)
    rows = outbox.backlog(after_id=0, before_id=outbox.last_id() + 1, limit=10)
    assert [r.seq for r in rows] == [0, 1, 2, 3, 4]
    assert {r.boot_id for r in rows} == {"boot1"}
    assert outbox.size == 5
    # A cursor and a bound: rows after id X and before the session's first live row.
    later = outbox.backlog(after_id=rows[1].id, before_id=rows[4].id, limit=10)
    assert [r.seq for r in later] == [2, 3]
    store.close_sync()


def test_acknowledged_rows_are_gone_and_acks_are_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = [_append(store, VIN, seq) for seq in range(3)]
    outbox = store.vehicle(VIN, max_records=100)
    outbox.acknowledge(ids[:2])
    outbox.acknowledge(ids[:2])
    assert outbox.size == 1
    assert [r.seq for r in outbox.backlog(after_id=0, before_id=10**9, limit=10)] == [2]
    store.close_sync()


def test_the_queue_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for seq in range(4):
        _append(store, VIN, seq)
    store.vehicle(VIN, max_records=100).acknowledge([1])
    store.close_sync()  # commits what the group commit had not yet

    again = _store(tmp_path)
    outbox = again.vehicle(VIN, max_records=100)
    assert outbox.size == 3
    assert [r.seq for r in outbox.backlog(after_id=0, before_id=10**9, limit=10)] == [1, 2, 3]
    # New rows keep counting upwards, after the old ones.
    new_id = _append(again, VIN, 99)
    assert new_id > 4
    again.close_sync()


def test_overflow_drops_the_oldest_counts_and_reports_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for seq in range(250):
        _append(store, VIN, seq, max_records=200)
    outbox = store.vehicle(VIN, max_records=200)
    assert outbox.size <= 200
    rows = outbox.backlog(after_id=0, before_id=10**9, limit=1000)
    assert rows[-1].seq == 249
    dropped = 250 - len(rows)
    assert dropped == outbox.dropped_total == outbox.unreported_overflow > 0
    assert rows[0].seq == dropped  # exactly the oldest went
    report = outbox.take_overflow_report()
    assert report is not None
    assert report.dropped == dropped
    assert report.oldest_dropped_ts == 1_700_000_000_000
    assert outbox.take_overflow_report() is None
    store.close_sync()


def test_an_unreported_overflow_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for seq in range(30):
        _append(store, VIN, seq, max_records=10)
    store.close_sync()
    again = _store(tmp_path)
    outbox = again.vehicle(VIN, max_records=10)
    report = outbox.take_overflow_report()
    assert report is not None
    assert report.dropped == 20
    assert outbox.dropped_total == 20
    again.close_sync()


def test_command_memory_is_durable(tmp_path: Path) -> None:
    store = _store(tmp_path)
    outbox = store.vehicle(VIN, max_records=10)
    assert not outbox.command_seen("c1", "n1")
    outbox.remember_command("c1", "n1", expires_at=2_000)
    store.close_sync()
    again = _store(tmp_path)
    outbox = again.vehicle(VIN, max_records=10)
    assert outbox.command_seen("c1", "other-nonce")
    assert outbox.command_seen("other-id", "n1")  # a reused nonce is a replay too
    assert not again.vehicle(OTHER, max_records=10).command_seen("c1", "n1")
    assert outbox.forget_commands_expired_before(3_000) == 1
    assert not outbox.command_seen("c1", "n1")
    again.close_sync()


def test_the_results_sent_for_a_command_are_remembered(tmp_path: Path) -> None:
    store = _store(tmp_path)
    outbox = store.vehicle(VIN, max_records=10)
    assert outbox.command_results("c1") is None  # never seen
    outbox.remember_command("c1", "n1", expires_at=2_000)
    assert outbox.command_results("c1") == []
    outbox.remember_result("c1", '{"outcome":"accepted"}')
    outbox.remember_result("c1", '{"outcome":"executed"}')
    store.close_sync()
    again = _store(tmp_path)
    outbox = again.vehicle(VIN, max_records=10)
    assert outbox.command_results("c1") == ['{"outcome":"accepted"}', '{"outcome":"executed"}']
    assert again.vehicle(OTHER, max_records=10).command_results("c1") is None
    assert outbox.forget_commands_expired_before(3_000) == 1
    assert outbox.command_results("c1") is None
    outbox.remember_command("c1", "n1", expires_at=5_000)
    assert outbox.command_results("c1") == []  # forgotten with the command
    again.close_sync()


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = _store(tmp_path)
    outbox = store.vehicle(VIN, max_records=10)
    store.close_sync()
    with pytest.raises(OutboxError):
        outbox.append(OutboxKind.EVENT, boot_id="b", seq=1, ts=1, body="{}")


def test_an_unusable_path_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError, match="cannot open"):
        OutboxStore(tmp_path / "file" / "queue.sqlite").open()


def test_rows_acknowledged_before_the_commit_never_reach_the_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    outbox = store.vehicle(VIN, max_records=100)
    fast = _append(store, VIN, 0)
    slow = _append(store, VIN, 1)
    outbox.acknowledge([fast])
    store.commit()
    rows = store._read("SELECT id FROM outbox")
    assert rows == [(slow,)]
    outbox.acknowledge([slow])
    store.commit()
    assert store._read("SELECT id FROM outbox") == []
    assert outbox.size == 0
    store.close_sync()
