"""The plain subscriber of `bench.fleet`: counts what the broker delivers from the cars.

One process, one plain socket (the gateway's MQTT framing from `gateway.ingest.mqtt_wire`, as
`bench._sink.WireSubscriber`), subscribed with QoS 1 to every car's telemetry, events and
status; the PUBACKs of each read go out in one write. It counts each kind and does nothing
else, so what it counts is what the broker delivered, and its CPU is small and measured apart.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
from typing import Any

from bench._sink import SubscriberProcess, publish_topic, read_publishes
from gateway.devstack import BrokerAccount
from schemas import TopicKind
from schemas.topics import topic_filter

__all__ = ["COUNTED_KINDS", "UplinkCounter"]

COUNTED_KINDS = (TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.STATUS)


class UplinkCounter(SubscriberProcess):
    """A subscriber process; `count(kind)` is how many messages of that kind it received."""

    def __init__(self, account: BrokerAccount) -> None:
        self._counts: dict[TopicKind, Any] = {
            kind: mp.Value("q", 0, lock=False)  # no lock: one writer
            for kind in COUNTED_KINDS
        }
        super().__init__(_count, (account, self._counts), "bench-fleet-subscriber")

    def count(self, kind: TopicKind) -> int:
        return int(self._counts[kind].value)

    @property
    def uplink(self) -> int:
        """Telemetry and event messages received (what the cars report)."""
        return self.count(TopicKind.TELEMETRY) + self.count(TopicKind.EVENTS)


def _count(
    account: BrokerAccount,
    counts: dict[TopicKind, Any],
    ready: multiprocessing.synchronize.Event,
) -> None:
    # The topic's last level says the kind: "/telemetry", "/events", "/status".
    suffixes = {f"/{kind.value}".encode(): counts[kind] for kind in COUNTED_KINDS}
    totals = dict.fromkeys(suffixes, 0)

    def counted(publishes: list[bytes]) -> None:
        for body in publishes:
            topic = publish_topic(body)
            suffix = topic[topic.rfind(b"/") :]
            if suffix in totals:
                totals[suffix] += 1
        for suffix, total in totals.items():
            suffixes[suffix].value = total

    filters = [topic_filter(kind) for kind in COUNTED_KINDS]
    read_publishes(account, f"{account.username}-fleet-bench", filters, ready, counted)
