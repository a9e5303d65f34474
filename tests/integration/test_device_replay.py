"""`tgw sim replay`: a recorded CAN log played through an in-car unit, through the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sim.app import run_replay
from device_sim.identity import read_credentials, write_credentials
from device_sim.profiles import load_profile
from device_sim.replay import replay_log
from device_sim.settings import MqttSettings, SimSettings, UnitSettings
from gateway.devstack import MosquittoBroker, random_vin
from schemas import StatusMessage, TelemetryMessage
from tests.integration.device_support import GatewayProbe, wait_until

pytestmark = pytest.mark.integration

TRIP_LOG = Path(__file__).parents[1] / "data" / "device" / "logs" / "vw_mqb_trip.log"


@pytest.fixture
async def gateway(mqtt_broker: MosquittoBroker) -> AsyncIterator[GatewayProbe]:
    async with GatewayProbe(mqtt_broker) as probe:
        yield probe


def _offline(vin: str) -> tuple[list[dict[str, object]], list[str]]:
    """What `--print` decodes from the log: sample signals and event types, in order."""
    signals: list[dict[str, object]] = []
    events: list[str] = []
    for message in replay_log(TRIP_LOG, load_profile("vw_mqb"), vin=vin):
        document = json.loads(message.payload)
        if message.kind.value == "events":
            events.append(document["type"])
        else:
            signals += [sample["signals"] for sample in document["samples"]]
    return signals, events


def _received_signals(gateway: GatewayProbe, vin: str) -> list[dict[str, object]]:
    return [
        sample.signals.model_dump(exclude_none=True)
        for message in gateway.of(vin, TelemetryMessage)
        for sample in message.samples
    ]


async def test_a_replayed_log_reaches_a_subscriber_as_the_unit_decoded_it(
    mqtt_broker: MosquittoBroker, tmp_path: Path, gateway: GatewayProbe
) -> None:
    vin = random_vin()
    password = mqtt_broker.add_car(vin)
    settings = SimSettings(
        mqtt=MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port, timeout_s=5),
        unit=UnitSettings(profile="vw_mqb", queue_dir=tmp_path),
    )
    started_ms = time.time_ns() // 1_000_000
    summary = await run_replay(settings, TRIP_LOG, vin=vin, password=password, speed=0)

    assert summary.frames_played == 1020
    assert summary.frames.unknown == 20  # the steering-angle frames the profile does not read
    assert summary.queued == 0  # the broker acknowledged everything
    expected_signals, expected_events = _offline(vin)
    assert summary.unit.samples == len(expected_signals)
    await wait_until(
        lambda: len(gateway.samples(vin)) == summary.unit.samples, what="every replayed sample"
    )
    # Through the broker, the same samples (values) and events as the offline decoding.
    assert _received_signals(gateway, vin) == expected_signals
    assert [event.type for event in gateway.events(vin)] == expected_events
    assert expected_events == ["unlocked", "door_opened", "door_closed", "ignition_on"]
    # One boot, one sequence for samples and events together; timestamps end at the start.
    samples = [s for m in gateway.of(vin, TelemetryMessage) for s in m.samples]
    seqs = sorted([s.seq for s in samples] + [e.seq for e in gateway.events(vin)])
    assert seqs == list(range(len(seqs)))
    assert started_ms - 21_000 <= samples[0].ts < samples[-1].ts <= started_ms + 1_000
    assert samples[-1].ts - samples[0].ts == 18_000  # spaced as recorded (log time)
    statuses = [s.online for s in gateway.of(vin, StatusMessage)]
    assert statuses[0] is True  # birth, as any car
    await wait_until(lambda: gateway.of(vin, StatusMessage)[-1].online is False, what="goodbye")
    assert gateway.rejected == []


def test_the_replay_command_publishes_and_prints_a_summary(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    vin = random_vin()
    credentials = tmp_path / "car.csv"
    write_credentials(credentials, [vin], None)
    mqtt_broker.add_car(vin, read_credentials(credentials)[vin])
    args = [
        "replay", str(TRIP_LOG), "--profile", "vw_mqb", "--vin", vin,
        "--host", mqtt_broker.host, "--port", str(mqtt_broker.port),
        "--credentials", str(credentials), "--queue-dir", str(tmp_path / "q"),
    ]  # fmt: skip
    # A process of its own: the CLI configures logging for its process (not the test's).
    tgw = Path(sys.executable).with_name("tgw")
    result = subprocess.run(  # our own entry point
        [str(tgw), "sim", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["vin"] == vin
    assert summary["frames_played"] == 1020
    assert summary["samples"] > 0
    assert summary["events"] == 4
    assert summary["queued"] == 0
    assert summary["rows_acknowledged"] == summary["samples"] + summary["events"]
