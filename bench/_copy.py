"""The database's ceiling: the gateway's telemetry rows COPY'd straight into `telemetry`.

The rows are exactly what the gateway writes (the load generator's payloads, decoded and
turned into rows by the gateway's own `IngestBatch`); they are built before the clock
starts. Each batch is one COPY and one commit on one connection, as large as the gateway's
batches. Only COPY and COMMIT are timed.
"""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg import sql

from bench._load import telemetry_payload
from gateway.ingest.batch import IngestBatch
from gateway.ingest.inbound import InboundMessage
from schemas import SIGNAL_NAMES, TopicKind, decode_uplink, vehicle_topic

__all__ = ["measure_raw_copy"]

_COLUMNS = ("time", "vin", "boot_id", "seq", "received_at", *SIGNAL_NAMES)


def _batches(vins: list[str], batch_size: int, count: int) -> list[list[tuple[object, ...]]]:
    boot_ids = {vin: str(uuid.uuid4()) for vin in vins}
    batches: list[list[tuple[object, ...]]] = []
    seq = 0
    for _ in range(count):
        batch = IngestBatch()
        for i in range(batch_size):
            vin = vins[(seq + i) % len(vins)]
            ts = time.time_ns() // 1_000_000
            topic = vehicle_topic(vin, TopicKind.TELEMETRY)
            payload = telemetry_payload(vin, boot_ids[vin], seq + i, ts)
            outcome = decode_uplink(topic, payload, received_at_ms=ts)
            batch.add(InboundMessage(topic, payload, 0, 1, 0, ts), outcome)
        seq += batch_size
        batches.append(batch.telemetry)
    return batches


def measure_raw_copy(
    dsn: str, vins: list[str], *, batch_size: int, seconds: float
) -> tuple[float, int]:
    """COPY batches for about `seconds`; return (rows per second of COPY+COMMIT time, rows)."""
    statement = sql.SQL("COPY telemetry ({}) FROM STDIN").format(
        sql.SQL(", ").join(sql.Identifier(name) for name in _COLUMNS)
    )
    # A first estimate of the rows needed: 60,000 rows/s, built in advance, in slices.
    rows_done, busy = 0, 0.0
    with psycopg.connect(dsn) as conn:
        while busy < seconds:
            for rows in _batches(vins, batch_size, 10):
                started = time.perf_counter()
                with conn.cursor() as cur, cur.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
                busy += time.perf_counter() - started
                rows_done += len(rows)
    return rows_done / busy, rows_done
