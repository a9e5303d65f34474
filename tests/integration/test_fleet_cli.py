"""The terminal console as a person runs it: `tgw vehicles`, `tgw vehicle VIN`, `tgw watch`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from gateway.auth import Role
from gateway.devstack import MosquittoBroker
from tests.integration.command_support import command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import SEEDED, seed_fleet, wait_http
from tests.integration.ingest_support import running_gateway
from tests.integration.test_commands_cli import TGW, tgw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_vehicles_vehicle_and_watch(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    seed = await seed_fleet(migrated_database)
    keys = make_keys(tmp_path / "k")
    settings = command_gateway_settings(private_broker, migrated_database, keys)
    token = await make_token(migrated_database, "cli-viewer", Role.VIEWER)
    env = {"TGW_API_URL": f"http://127.0.0.1:{settings.http.port}", "TGW_API_TOKEN": token}
    async with running_gateway(settings):
        await wait_http(settings)

        listed = await tgw("vehicles", "--json", env=env)
        assert listed.code == 0, listed.err
        assert sorted(car["vin"] for car in json.loads(listed.out)["items"]) == seed.all

        low = await tgw("vehicles", "--fuel-below", "15", "--json", env=env)
        assert sorted(c["vin"] for c in json.loads(low.out)["items"]) == sorted(
            [seed.low_fuel, seed.ev_low]
        )

        table = await tgw("vehicles", "--offline", env=env | {"COLUMNS": "160"})
        assert table.code == 0, table.err
        assert seed.offline in table.out
        assert seed.parked_ok not in table.out
        assert "2 cars" in table.out

        one = await tgw("vehicle", SEEDED.low_fuel, env=env | {"COLUMNS": "160"})
        assert one.code == 0, one.err
        assert "front left open" in one.out
        assert "fuel at 9 %" in one.out

        unknown = await tgw("vehicle", "WBA00000000000000", env=env)
        assert unknown.code == 2
        assert "unknown to this fleet" in unknown.err

        no_token = await tgw("vehicles", env={"TGW_API_URL": env["TGW_API_URL"]})
        assert no_token.code == 2
        assert "TGW_API_TOKEN" in no_token.err
        nobody = await tgw("vehicles", env=env | {"TGW_API_URL": "http://127.0.0.1:9"})
        assert nobody.code == 2
        assert "is it running" in nobody.err

        # `tgw watch` draws the fleet from the live stream until Ctrl-C.
        watch = await asyncio.create_subprocess_exec(
            TGW,
            "watch",
            env={k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
            | env
            | {"COLUMNS": "160", "LINES": "40"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watch.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while b"6 cars" not in seen and time.monotonic() < deadline:
            try:
                seen += await asyncio.wait_for(watch.stdout.read(4096), 1)
            except TimeoutError:
                continue
        watch.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(watch.communicate(), 15)
        output = (seen + rest).decode()
        assert "6 cars" in output
        assert "live" in output
        assert seed.low_fuel in output  # in the alerts table
        assert watch.returncode == 0
