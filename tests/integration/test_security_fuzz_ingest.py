"""Fuzzed payloads through the real broker and gateway: every rejected message is a dead letter.

A car publishes a batch of hostile payloads on its own topics (mutated anywhere inside, wrong
types, truncated, deeply nested, oversized up to the broker's packet limit, not UTF-8, another
car's VIN, clocks far off). Each is classified up front with `decode_uplink` (what the protocol
says should happen); afterwards the database holds exactly one dead letter per rejected message,
with the same reason, the gateway is still running, and the accepted ones are stored.

Inputs: TGW_FUZZ_INGEST_EXAMPLES (default 300).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devstack import BrokerAccount, MosquittoBroker, MqttTestClient, random_vin
from schemas import Rejected, TopicKind, decode_uplink, vehicle_topic
from schemas.limits import MAX_PAYLOAD_BYTES
from tests.fuzzing import OTHER_VIN, dumps, json_values, mutated, valid_uplink
from tests.integration.ingest_support import fetch, gateway_settings, now_ms, running_gateway

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("TGW_FUZZ_INGEST_EXAMPLES", "300"))
VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
INGESTED = [TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.STATUS]
# Below Mosquitto's max_packet_size (131072, mosquitto.conf): bigger ones cost the car its
# connection at the broker and never reach the gateway.
_LARGEST = 120_000


HOSTILE = (
    "mutated", "typed", "truncated", "nested", "huge", "binary", "other_vin", "clock", "valid",
)  # fmt: skip


def _hostile(how: str, vin: str, ts: int) -> st.SearchStrategy[tuple[TopicKind, bytes]]:
    """Payloads of one hostile kind (`how`), on a topic kind the gateway ingests."""

    @st.composite
    def draw_one(draw: st.DrawFn) -> tuple[TopicKind, bytes]:
        kind = draw(st.sampled_from(INGESTED))
        return kind, draw(_hostile_payload(how, valid_uplink(kind, ts=ts - 1000, vin=vin), ts))

    return draw_one()


def _hostile_payload(  # noqa: PLR0911  # one per kind of hostility
    how: str, valid: dict[str, object], ts: int
) -> st.SearchStrategy[bytes]:
    if how == "mutated":
        return mutated(valid).map(dumps)
    if how == "typed":
        return json_values.map(dumps)
    if how == "truncated":
        payload = dumps(valid)
        return st.integers(0, len(payload) - 1).map(lambda cut: payload[:cut])
    if how == "nested":
        return st.integers(10, MAX_PAYLOAD_BYTES // 2).map(lambda n: b"[" * n + b"]" * n)
    if how == "huge":
        sizes = st.integers(MAX_PAYLOAD_BYTES - 10, _LARGEST)
        return sizes.map(lambda n: dumps({**valid, "pad": "x" * n})[:_LARGEST])
    if how == "binary":
        return st.binary(min_size=1, max_size=300)
    if how == "other_vin":
        vins = st.text(VIN_ALPHABET, min_size=17, max_size=17) | st.just(OTHER_VIN)
        return vins.map(lambda other: dumps({**valid, "vin": other}))
    if how == "clock":
        # Beyond the accepted window (schemas.limits): weeks in the future, years in the past.
        skews = st.integers(-(10**12), -400 * 86_400_000) | st.integers(86_400_000, 10**13)
        return skews.map(lambda skew: dumps({**valid, "ts": ts + skew}))
    # Valid: a boot id of its own, so none is a duplicate of another.
    return st.uuids().map(lambda boot: dumps({**valid, "boot_id": boot.hex}))


def _payloads(vin: str) -> list[tuple[TopicKind, bytes]]:
    """The batch: an equal share of every kind of hostility, drawn by hypothesis (its shrinking
    is not needed: the property is checked on the whole batch at once)."""
    drawn: list[tuple[TopicKind, bytes]] = []
    ts = now_ms()
    for how in HOSTILE:

        @settings(
            max_examples=max(1, EXAMPLES // len(HOSTILE)),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(_hostile(how, vin, ts))
        def collect(item: tuple[TopicKind, bytes]) -> None:
            drawn.append(item)

        collect()
    return drawn


async def test_every_rejected_fuzzed_payload_is_a_dead_letter_with_its_reason(
    private_broker: MosquittoBroker, migrated_database: str
) -> None:
    broker = private_broker
    vin = random_vin()
    car = BrokerAccount(vin, broker.add_car(vin), broker.host, broker.port)
    batch = _payloads(vin)
    settings = gateway_settings(broker, migrated_database)
    expected: Counter[str] = Counter()
    async with running_gateway(settings) as gateway:

        def publish_all() -> None:
            with MqttTestClient(car, timeout_s=30) as client:
                for kind, payload in batch:
                    outcome = decode_uplink(
                        vehicle_topic(vin, kind), payload, received_at_ms=now_ms()
                    )
                    if isinstance(outcome, Rejected):
                        expected[outcome.reason.value] += 1
                    assert client.publish(vehicle_topic(vin, kind), payload).value == 0

        await asyncio.to_thread(publish_all)
        rejected = sum(expected.values())
        deadline = time.monotonic() + 60
        stored: dict[str, int] = {}
        while time.monotonic() < deadline:
            rows = await fetch(
                migrated_database,
                "SELECT reason, count(*) FROM dead_letters WHERE vin = %s GROUP BY reason",
                (vin,),
            )
            stored = {reason: int(count) for reason, count in rows}
            if sum(stored.values()) >= rejected:
                break
            await asyncio.sleep(0.1)
        assert not gateway.done(), "the gateway stopped on fuzzed input"
    assert stored == dict(expected), (stored, expected)
    assert rejected > len(batch) // 2  # most inputs were hostile
    print(f"\nfuzzed payloads through broker+gateway: {len(batch)}, rejected {rejected}")
    print(f"reasons: {dict(expected)}")
    other = await fetch(
        migrated_database, "SELECT count(*) FROM dead_letters WHERE vin IS DISTINCT FROM %s", (vin,)
    )
    assert other == [(0,)]  # every dead letter is filed under the topic's VIN
