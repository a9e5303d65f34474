"""Duplicated and reordered deliveries: cars re-publishing part of their backlog, out of order.

`Capture` records, with an account of the gateway's rights on a plain (not shared)
subscription, the telemetry some cars publish. After those cars have gone offline, `replay`
connects as each of them (its own account: the broker lets a car publish only on its own
topics) and publishes a random part of what it sent before, shuffled, some messages twice:
what a box does whose firmware resends its queue after a reboot without having recorded the
acknowledgements. Every replayed sample is a duplicate of one already stored.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from gateway.devstack import BrokerAccount, MqttTestClient
from gateway.errors import DevStackError
from schemas import TopicKind, vehicle_topic

__all__ = ["Capture", "ReplayReport", "replay"]

# The cars' own session expiry: connecting as a car must not end the session it keeps.
_CAR_SESSION_EXPIRY_S = 3600


class Capture:
    """Records the telemetry of `vins` while open (a sync context manager)."""

    def __init__(self, account: BrokerAccount, vins: list[str]) -> None:
        self._client = MqttTestClient(account, timeout_s=10.0)
        self._topics = [vehicle_topic(vin, TopicKind.TELEMETRY) for vin in vins]

    def __enter__(self) -> Capture:
        self._client.__enter__()
        reasons = self._client.subscribe(*self._topics, qos=1)
        if any(reason.is_failure for reason in reasons):
            self._client.close()
            raise DevStackError(f"the capture subscription was refused: {reasons}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def take(self) -> list[tuple[str, bytes]]:
        """Everything received so far, in arrival order: (topic, payload)."""
        taken = []
        while not self._client.messages.empty():
            message = self._client.messages.get_nowait()
            taken.append((message.topic, message.payload))
        return taken


@dataclass(frozen=True, slots=True)
class ReplayReport:
    cars: int
    captured: int
    republished: int  # messages published again (each a duplicate of a stored one)


def replay(
    accounts: dict[str, BrokerAccount],
    captured: list[tuple[str, bytes]],
    *,
    share: float,
    twice_share: float,
    rng: random.Random,
) -> ReplayReport:
    """Re-publish `share` of each car's captured messages in a shuffled order, `twice_share`
    of those a second time, each car over its own connection; wait for every PUBACK."""
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in captured:
        by_topic[topic].append(payload)
    topic_vin = {vehicle_topic(vin, TopicKind.TELEMETRY): vin for vin in accounts}
    republished = 0
    cars = 0
    for topic, payloads in by_topic.items():
        vin = topic_vin.get(topic)
        if vin is None or not payloads:
            continue
        chosen = rng.sample(payloads, max(1, round(len(payloads) * share)))
        chosen += [p for p in chosen if rng.random() < twice_share]
        rng.shuffle(chosen)
        client = MqttTestClient(
            accounts[vin], clean_start=False, session_expiry_s=_CAR_SESSION_EXPIRY_S
        )
        with client:
            for payload in chosen:
                reason = client.publish(topic, payload, qos=1)
                if reason.is_failure:
                    raise DevStackError(f"{vin}: the broker refused a replayed message: {reason}")
                republished += 1
        cars += 1
    return ReplayReport(cars=cars, captured=len(captured), republished=republished)
