"""Prometheus metrics of the command system, in the process's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["CommandMetrics"]


class CommandMetrics:
    """Counters and histograms for commands in one gateway process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requested = Counter(
            "tgw_commands_requested", "Command requests accepted by the API", ["action"], registry=r
        )
        self.refused = Counter(
            "tgw_commands_refused", "Command requests refused at once", ["kind"], registry=r
        )
        self.dispatch = Counter(
            "tgw_commands_dispatch", "Dispatch attempts by outcome", ["outcome"], registry=r
        )
        self.results = Counter(
            "tgw_commands_results",
            "Car results by what they did (apply, duplicate, stale, late, conflict, dead_letter)",
            ["effect"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tgw_commands_dead_letters",
            "Command results kept as dead letters",
            ["reason"],
            registry=r,
        )
        self.swept = Counter(
            "tgw_commands_swept", "Commands resolved by the sweeper", ["status"], registry=r
        )
        self.publish_seconds = Histogram(
            "tgw_commands_publish_seconds",
            "Publish to PUBACK",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "tgw_commands_batch_size",
            "Commands or results handled in one transaction, by stage (create, dispatch, results)",
            ["stage"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
