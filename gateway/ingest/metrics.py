"""Prometheus metrics of ingest, in a registry owned by the process (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class IngestMetrics:
    """Counters and histograms for one gateway process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "tgw_ingest_messages_received", "MQTT messages received", ["kind"], registry=r
        )
        self.stored = Counter(
            "tgw_ingest_rows_stored", "Rows committed, by table", ["table"], registry=r
        )
        self.duplicates = Counter(
            "tgw_ingest_duplicates", "Rows already stored (redelivered or repeated)", registry=r
        )
        self.dead_letters = Counter(
            "tgw_ingest_dead_letters",
            "Rejected messages kept as dead letters",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "tgw_ingest_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "tgw_ingest_commit_seconds",
            "Time to write and commit one batch",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.lag_seconds = Histogram(
            "tgw_ingest_lag_seconds",
            "Device time to commit, per sample or event",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.write_failures = Counter(
            "tgw_ingest_write_failures",
            "Batch writes that failed and were retried",
            ["kind"],
            registry=r,
        )
        self.database_up = Gauge(
            "tgw_ingest_database_up", "1 when the last write succeeded", registry=r
        )
        self.broker_connected = Gauge(
            "tgw_ingest_broker_connected", "1 while connected to the broker", registry=r
        )
        self.pending = Gauge(
            "tgw_ingest_pending_messages", "Received, not yet committed", registry=r
        )
        self.last_commit = Gauge(
            "tgw_ingest_last_commit_timestamp_seconds", "Unix time of the last commit", registry=r
        )
