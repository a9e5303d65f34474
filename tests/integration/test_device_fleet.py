"""A small simulated fleet against a real Mosquitto: every ledger row arrives; the CLI works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device_sim.fleet import Fleet, FleetFaults
from device_sim.identity import fleet_vins, read_credentials, write_credentials
from device_sim.ledger import read_ledger
from device_sim.settings import SimSettings
from gateway.devstack import MosquittoBroker
from schemas import TelemetryMessage
from tests.integration.device_support import GatewayProbe, wait_until

pytestmark = pytest.mark.integration

PROFILES = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")


def _provision(broker: MosquittoBroker, path: Path, cars: int, seed: int) -> dict[str, str]:
    write_credentials(path, [vin for vin, _ in fleet_vins(cars, seed, PROFILES)])
    credentials = read_credentials(path)
    for vin, password in credentials.items():
        broker.add_car(vin, password)
    return credentials


async def test_every_ledger_row_reaches_the_broker(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    credentials = _provision(mqtt_broker, tmp_path / "creds.csv", cars=12, seed=5)
    settings = SimSettings.model_validate(
        {
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
            "unit": {"queue_dir": tmp_path / "q", "driving_interval_s": 0.5,
                     "parked_interval_s": 2},
            "fleet": {"cars": 12, "seed": 5, "ledger_file": tmp_path / "ledger.csv",
                      "driving_share": 0.5},
        }
    )  # fmt: skip
    async with GatewayProbe(mqtt_broker) as gateway:
        fleet = Fleet(settings, credentials, faults=FleetFaults(duplicate_share=0.1))
        summary = await fleet.run(duration_s=6.0)
        ledger = read_ledger(tmp_path / "ledger.csv")

        def received() -> set[tuple[str, str, int]]:
            rows: set[tuple[str, str, int]] = set()
            for accepted in gateway.accepted:
                message = accepted.message
                if isinstance(message, TelemetryMessage):
                    rows |= {(message.vin, message.boot_id, s.seq) for s in message.samples}
                elif accepted.topic.kind.value == "events":
                    event: Any = message
                    rows.add((event.vin, event.boot_id, event.seq))
            return rows

        published = {(vin, boot, seq) for vin, boot, seq, _, _ in ledger}
        await wait_until(lambda: published <= received(), what="every ledger row at the gateway")

    assert summary.vehicles == 12
    assert summary.connect_s is not None
    assert summary.ledger_rows == len(ledger) == len(published) > 12
    assert summary.samples >= summary.ledger_rows - summary.events
    assert summary.duplicates_sent > 0  # the fault was injected; the ledger counts rows once
    assert gateway.rejected == []
    assert {vin for vin, *_ in ledger} == set(credentials)


def test_the_fleet_command_line_over_two_processes(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    tgw = Path(sys.executable).with_name("tgw")
    creds = tmp_path / "creds.csv"
    made = subprocess.run(
        [str(tgw), "sim", "credentials", "--cars", "4", "--seed", "9", "--out", str(creds)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for vin, password in read_credentials(creds).items():
        mqtt_broker.add_car(vin, password)
    run = subprocess.run(
        [
            str(tgw), "sim", "fleet", "--cars", "4", "--seed", "9", "--credentials", str(creds),
            "--host", mqtt_broker.host, "--port", str(mqtt_broker.port), "--duration", "3",
            "--queue-dir", str(tmp_path / "q"), "--ledger", str(tmp_path / "ledger.csv"),
            "--progress-every", "1", "--processes", "2",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["vehicles"] == 4
    assert summary["connected"] == 4
    assert summary["msgs_published"] > 0
    assert summary["processes"] == 2
    assert summary["ledger_rows"] == len(read_ledger(tmp_path / "ledger.csv"))
    assert not list(tmp_path.glob("ledger.csv.p*"))  # the parts were merged
    for key in ("msgs_per_s", "sim_cpu_pct", "sim_rss_mb", "connect_s"):
        assert key in summary
    assert "connected 4/4" in run.stderr


def test_a_fleet_without_accounts_is_told_what_to_do(tmp_path: Path) -> None:
    tgw = Path(sys.executable).with_name("tgw")
    (tmp_path / "creds.csv").write_text("vin,password\n")
    run = subprocess.run(
        [str(tgw), "sim", "fleet", "--cars", "3", "--credentials", str(tmp_path / "creds.csv"),
         "--duration", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert "tgw sim credentials --cars 3" in run.stderr
    assert "Traceback" not in run.stderr


async def test_a_burst_of_connects_is_let_through_a_few_at_a_time(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # Every car's turn comes at once (10,000 a second); one handshake in progress at a time.
    credentials = _provision(mqtt_broker, tmp_path / "creds.csv", cars=20, seed=8)
    settings = SimSettings.model_validate(
        {
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
            "unit": {"queue_dir": tmp_path / "q"},
            "fleet": {"cars": 20, "seed": 8, "connect_rate_per_s": 10_000,
                      "connect_concurrency": 1},
        }
    )  # fmt: skip
    fleet = Fleet(settings, credentials)
    summary = await fleet.run(duration_s=4.0)
    assert summary.connect_s is not None
    assert summary.connected == summary.sessions == 20
    assert summary.connect_failures == 0
