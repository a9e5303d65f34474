"""`tgw sim` commands that need no broker: replay, profiles, credentials, and errors for people."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from device_sim.cli import app
from device_sim.codec import DecodeCounters
from device_sim.identity import fleet_vins, read_credentials
from device_sim.profiles import load_profile
from device_sim.replay import replay_log
from schemas import EVENT_ADAPTER, TelemetryMessage

pytestmark = pytest.mark.unit

TRIP_LOG = Path(__file__).parents[1] / "data" / "device" / "logs" / "vw_mqb_trip.log"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # The CLI configures structlog onto the runner's stderr, which is closed afterwards.
    yield
    structlog.reset_defaults()


def test_replaying_a_candump_log() -> None:
    counters = DecodeCounters()
    messages = list(
        replay_log(TRIP_LOG, load_profile("vw_mqb"), vin="WVW12345678901234", counters=counters)
    )
    events = [EVENT_ADAPTER.validate_json(m.payload) for m in messages if m.kind.value == "events"]
    assert [e.type for e in events] == ["unlocked", "door_opened", "door_closed", "ignition_on"]
    samples = [
        s
        for m in messages
        if m.kind.value == "telemetry"
        for s in TelemetryMessage.model_validate_json(m.payload).samples
    ]
    assert samples[0].signals.locked is True
    assert samples[0].signals.fuel == 41.0
    assert samples[-1].signals.speed == 40.0
    assert samples[-1].signals.ignition is True
    seqs = sorted([s.seq for s in samples] + [e.seq for e in events])
    assert seqs == list(range(len(seqs)))
    assert counters.unknown == 20  # the steering-angle frames the profile does not read
    assert counters.malformed == 0


def test_replay_command_prints_json_lines() -> None:
    result = runner.invoke(app, ["replay", str(TRIP_LOG), "--profile", "vw_mqb", "--print"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"topic')]
    assert {line["topic_kind"] for line in lines} == {"telemetry", "events"}


def test_profiles_command() -> None:
    result = runner.invoke(app, ["profiles"])
    assert result.exit_code == 0
    assert "bmw_e8x" in result.stdout
    assert "vw_mqb" in result.stdout


def test_credentials_command(tmp_path: Path) -> None:
    out = tmp_path / "creds.csv"
    result = runner.invoke(app, ["credentials", "--cars", "3", "--seed", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profiles = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")
    assert list(read_credentials(out)) == [vin for vin, _ in fleet_vins(3, 4, profiles)]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["car", "--vin", "not-a-vin"], "--vin 'not-a-vin'"),
        (["replay", "/nonexistent.log", "--profile", "vw_mqb"], "does not exist"),
        (["replay", "/nonexistent.log", "--profile", "vw_mqb", "--print"], "does not exist"),
        (["replay", str(TRIP_LOG), "--profile", "trabant"], "no vehicle profile named"),
        (["replay", str(TRIP_LOG), "--profile", "vw_mqb"], "needs the password"),
        (["fleet", "--cars", "2"], "needs --credentials"),
    ],
)
def test_mistakes_are_one_line_not_a_traceback(args: list[str], complaint: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert complaint in result.output
    assert "Traceback" not in result.output
