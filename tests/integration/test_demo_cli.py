"""`tgw demo` end to end: everything starts, the console answers with the printed token and
shows the cars, and Ctrl-C stops it all in reverse order."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.devstack import free_port
from tests.integration.test_commands_cli import TGW

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_demo_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    http_port = free_port()
    process = await asyncio.create_subprocess_exec(
        TGW, "demo", "--cars", "5", "--dir", str(tmp_path / "state"),
        "--http-port", str(http_port), "--mqtt-port", str(free_port()),
        "--pg-port", str(free_port()), "--status-every", "2",
        env={k: v for k, v in os.environ.items() if not k.startswith("TGW_")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    output = ""
    deadline = time.monotonic() + 150
    while "Ctrl-C stops everything" not in output:
        assert time.monotonic() < deadline, output
        assert process.returncode is None, output + (await process.stderr.read()).decode()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 5)
        except TimeoutError:
            continue
        output += line.decode()
    while "Database" not in output:
        output += (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
    token_match = re.search(r"Token\s+(tgw_\S+)", output)
    assert token_match, output
    token = token_match.group(1)
    assert f"http://127.0.0.1:{http_port}/console/#token={token}" in output

    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            assert (await client.get("/console/")).status_code == 200
            assert (await client.get("/v1/whoami")).json()["role"] == "operator"
            online = 0
            while online < 5 and time.monotonic() < deadline:
                page = (await client.get("/v1/vehicles", params={"online": "true"})).json()
                online = page["total"]
                await asyncio.sleep(0.5)
            assert online == 5
    finally:
        process.send_signal(signal.SIGINT)
        _, rest_err = await asyncio.wait_for(process.communicate(), 90)
    errors = rest_err.decode()
    assert process.returncode == 0, errors
    order = [
        errors.index("stopping the fleet"),
        errors.index("stopping the gateway"),
        errors.index("stopping PostgreSQL, then Mosquitto"),
        errors.index("tgw demo: stopped."),
    ]
    assert order == sorted(order), errors
    state = tmp_path / "state"
    assert (state / "fleet.csv").stat().st_mode & 0o777 == 0o600
    assert (state / "logs" / "gateway.log").stat().st_size > 0
