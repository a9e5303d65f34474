"""The console in a real browser: sign in, watch simulated cars move, unlock one, see the result.

Everything is real: Mosquitto, PostgreSQL/TimescaleDB, the gateway (in this event loop), a fleet
of simulated cars (`tgw sim fleet` in a child process) and Debian's Chromium driven by Playwright
(its own browser download is never used). Screenshots land in tests/e2e/artifacts/ at a desktop
size and at 390x844 (a phone).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright

from device_sim.identity import fleet_vins, read_credentials, write_credentials
from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles
from gateway.config import Settings
from gateway.devstack import MosquittoBroker
from tests.integration.command_support import command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import wait_http
from tests.integration.ingest_support import running_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CARS = 12
SEED = 7
PROFILES = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")
DESKTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
_TGW = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.argv[0]='tgw'; main()"]


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = (
        "Debian's chromium is not installed: run scripts/setup.sh (or apt-get install chromium)"
    )
    if os.environ.get("TGW_SETUP_BROWSER") == "0":
        pytest.skip(message + "; TGW_SETUP_BROWSER=0 left it out")
    pytest.fail(message)


@asynccontextmanager
async def simulated_fleet(
    broker: MosquittoBroker, directory: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`tgw sim fleet` with CARS cars (accounts created first), stopped with SIGTERM at the end."""
    credentials = directory / "fleet.csv"
    vins = [vin for vin, _ in fleet_vins(CARS, SEED, PROFILES)]
    await asyncio.to_thread(write_credentials, credentials, vins)
    for vin, password in (await asyncio.to_thread(read_credentials, credentials)).items():
        await asyncio.to_thread(broker.add_car, vin, password)
    log = await asyncio.to_thread((directory / "fleet.log").open, "wb")
    # driving-share 0.6 and 1 s samples: enough cars move within seconds.
    process = await asyncio.create_subprocess_exec(
        *_TGW, "sim", "fleet", "--cars", str(CARS), "--seed", str(SEED),
        "--host", broker.host, "--port", str(broker.port), "--credentials", str(credentials),
        "--queue-dir", str(directory / "queues"), "--driving-share", "0.6",
        "--driving-interval", "1", "--progress-every", "60",
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _wait_for(page: Page, expression: str, timeout_s: float, what: str) -> Any:
    """Poll a JavaScript expression in the page until it is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while time.monotonic() < deadline:
        value = await page.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last value {value!r})")


POSITIONS = """() => Object.fromEntries([...window.tgwConsole.cars.values()]
    .filter((c) => c.lat != null).map((c) => [c.vin, [c.lat, c.lon]]))"""


async def test_sign_in_watch_cars_move_and_unlock_one(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    _need_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    keys: KeyPairFiles = make_keys(tmp_path / "keys")
    settings: Settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "e2e-operator", Role.OPERATOR)
    base = f"http://127.0.0.1:{settings.http.port}"
    async with (
        running_gateway(settings),
        simulated_fleet(mqtt_broker, tmp_path / "fleet") as fleet,
        async_playwright() as playwright,
    ):
        await wait_http(settings)
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=DESKTOP,
        )
        errors: list[str] = []
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))

            # Sign in with the token.
            await page.goto(f"{base}/")
            await page.fill("#token", token)
            await page.click("#signin-button")
            await page.wait_for_selector("#app:not([hidden])")
            assert "e2e-operator" in await page.inner_text("#whoami")

            # Every car arrives over the live stream and is drawn on the map.
            await _wait_for(
                page, f"window.tgwConsole.cars.size === {CARS}", 60, "all cars in the console"
            )
            await _wait_for(
                page, "window.tgwConsole.layer.drawnCount() > 0", 10, "cars drawn on the map"
            )
            # ... and they move without a reload.
            before = await page.evaluate(POSITIONS)
            moved = await _wait_for(
                page,
                f"""() => {{ const before = {before!r}; const now = ({POSITIONS})();
                    return Object.keys(now).filter((v) => before[v] &&
                        (before[v][0] !== now[v][0] || before[v][1] !== now[v][1])).length; }}""",
                45,
                "a car moving on the map",
            )
            assert moved >= 1
            await page.wait_for_timeout(1200)  # let the easing settle for the picture
            await page.screenshot(path=str(ARTIFACTS / "console-desktop.png"))

            # Pick an online car through the search box and unlock it.
            vin = await _wait_for(
                page,
                "() => ([...window.tgwConsole.cars.values()].find((c) => c.online) || {}).vin",
                30,
                "an online car",
            )
            await page.fill("#search", vin[-6:])
            await page.click(f'#list .row[data-vin="{vin}"]')
            await page.wait_for_selector("#vehicle:not([hidden])")
            assert await page.inner_text("#v-vin") == vin
            await page.click("#btn-unlock")
            await page.wait_for_selector("#command:not([hidden])")
            outcome = page.locator("#command-outcome.good")
            await outcome.wait_for(timeout=45_000)
            assert "Unlocked" in await outcome.inner_text()
            # The car's own telemetry then shows it unlocked in the panel.
            await page.locator("#v-lock", has_text="Unlocked").wait_for(timeout=30_000)
            await page.locator("#v-commands li", has_text="unlock").first.wait_for(timeout=10_000)
            await page.screenshot(path=str(ARTIFACTS / "console-desktop-unlocked.png"))

            # A phone: nothing wider than the screen, the panel still usable.
            await page.set_viewport_size(PHONE)
            await page.wait_for_timeout(800)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"]
            assert await page.is_visible("#btn-unlock")
            await page.screenshot(path=str(ARTIFACTS / "console-phone.png"))
            await page.click("#vehicle-close")
            await page.wait_for_timeout(500)
            await page.screenshot(path=str(ARTIFACTS / "console-phone-list.png"))
            assert errors == []
        finally:
            await browser.close()
        assert fleet.returncode is None, "the simulated fleet died during the test"
    for name in ("console-desktop.png", "console-desktop-unlocked.png", "console-phone.png"):
        assert (await asyncio.to_thread((ARTIFACTS / name).stat)).st_size > 10_000, name
