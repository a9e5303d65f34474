"""`tgw dev up` end to end: starts, migrates, writes credentials (enough for `tgw provision`),
stops cleanly on SIGTERM."""

from __future__ import annotations

import queue
import signal
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import IO

import psycopg

from gateway.devstack import connack_reason, free_port, port_is_free
from gateway.provisioning.carconfig import read_car_config

START_TIMEOUT_S = 120.0


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_dev_up_runs_migrated_services_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mqtt_port, pg_port = free_port(), free_port()
    code = (
        "from gateway.cli.dev import app; "
        f"app(['up', '--dir', {str(state)!r}, '--mqtt-port', '{mqtt_port}', "
        f"'--pg-port', '{pg_port}'])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, output), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("running" in line for line in seen):
            try:
                seen.append(output.get(timeout=START_TIMEOUT_S))
            except queue.Empty:
                raise AssertionError(f"tgw dev up did not come up:\n{''.join(seen)}") from None
            assert proc.poll() is None, "".join(seen)
        summary = "".join(seen)
        while True:  # the rest of the summary
            try:
                summary += output.get(timeout=2)
            except queue.Empty:
                break
        assert f"127.0.0.1:{mqtt_port}" in summary
        assert "migrations  applied now:" in summary

        credentials = state / "credentials.toml"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        settings = tomllib.loads(credentials.read_text())
        mqtt = settings["mqtt"]
        assert mqtt["password"] not in summary
        reason = connack_reason("127.0.0.1", mqtt_port, mqtt["username"], mqtt["password"])
        assert reason == 0, reason
        with psycopg.connect(settings["database"]["dsn"]) as conn:
            row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert row is not None
        assert row[0] >= 1

        # The credentials name the broker's files and a signing key: a car can be provisioned
        # against the dev stack as it is, and then logs in with its own account.
        vin, car_file = "WBAUE11040E777777", tmp_path / "car.toml"
        provision = subprocess.run(
            [
                sys.executable,
                "-c",
                "from gateway.cli import main; main()",
                "provision",
                vin,
                "--model",
                "bmw_e8x",
                "--out",
                str(car_file),
            ],
            env={"TGW_CONFIG": str(credentials), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert provision.returncode == 0, provision.stdout + provision.stderr
        car = read_car_config(car_file, vin=vin)
        assert connack_reason("127.0.0.1", mqtt_port, vin, car.password) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=5)
        proc.stdout.close()
    assert proc.returncode == 0
    assert port_is_free(mqtt_port)
    assert port_is_free(pg_port)
