"""The insight pages in a real browser, on a desktop and on a phone (390x844).

A day of a simulated fleet (device_sim's driving model, sampled like the in-car unit) is written
into the real database; the real gateway derives trips and utilisation; Debian's Chromium,
driven by Playwright, shows the utilisation heat map on the city map, the service list with the
refuelling route, and one car's trips with a track. Screenshots land in tests/e2e/artifacts/
(insights-*-desktop.png, insights-*-phone.png); nothing may be wider than the phone's screen.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.async_api import Page, async_playwright

from gateway.auth import Role
from gateway.devstack import MosquittoBroker
from tests.e2e.test_console_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    _need_chromium,
)
from tests.integration.command_support import command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import wait_http
from tests.integration.ingest_support import running_gateway
from tests.integration.insights_support import simulate_fleet, store

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CARS = 16
HOURS = 20
# Munich's centre as an operating area (vertices [lon, lat]).
CENTRE = [(11.50, 48.10), (11.65, 48.10), (11.65, 48.18), (11.50, 48.18)]


async def _wait_for(page: Page, expression: str, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while time.monotonic() < deadline:
        value = await page.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last value {value!r})")


async def _needs_service(dsn: str, vins: list[str]) -> None:
    """Some cars low on fuel or charge, one with a door open, one offline for hours."""
    low, door, offline = vins[:5], vins[5], vins[6]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "UPDATE latest_state SET fuel = CASE WHEN fuel IS NULL THEN NULL ELSE 7 END, "
            "soc = CASE WHEN soc IS NULL THEN NULL ELSE 9 END WHERE vin = ANY(%s)",
            (low,),
        )
        await conn.execute(
            "UPDATE latest_state SET door_rr_open = true, ignition = false, speed = 0 "
            "WHERE vin = %s",
            (door,),
        )
        await conn.execute(
            "UPDATE vehicles SET online = false, last_seen_at = now() - interval '3 hours' "
            "WHERE vin = %s",
            (offline,),
        )
        await conn.commit()


async def _no_overflow(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px phone"


async def test_insight_pages_on_a_desktop_and_a_phone(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    _need_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    dsn = migrated_database
    start = (datetime.now(UTC) - timedelta(hours=HOURS)).replace(second=0, microsecond=0)
    fleet = await asyncio.to_thread(simulate_fleet, CARS, HOURS, seed=21, start=start)
    await store(dsn, fleet.samples, fleet.events, models=fleet.models)
    vins = sorted(fleet.models)
    await _needs_service(dsn, vins)
    busiest = max(vins, key=lambda v: sum(t.vin == v for t in fleet.trips))
    settings = command_gateway_settings(
        private_broker, dsn, make_keys(tmp_path / "keys"), operating_areas={"munich": CENTRE}
    )
    token = await make_token(dsn, "e2e-analyst", Role.VIEWER)
    base = f"http://127.0.0.1:{settings.http.port}/console/insights.html"
    async with running_gateway(settings), async_playwright() as playwright:
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
            await page.goto(base)
            await page.fill("#token", token)
            await page.click("#signin-button")
            await page.wait_for_selector("#app:not([hidden])")
            assert "e2e-analyst" in await page.inner_text("#whoami")

            # Utilisation: the heat map over the city, the week, the models.
            cells = await _wait_for(
                page,
                "window.tgwInsights.cellsDrawn",
                60,
                "utilisation cells on the map (the gateway refreshes at start-up)",
            )
            assert cells >= 3
            assert await page.locator("path.heat-cell").count() == cells
            assert await page.locator("#u-models tbody tr").count() == 4
            assert await page.locator("#u-week .c").count() == 7 * 24
            await page.wait_for_timeout(500)
            await page.screenshot(path=str(ARTIFACTS / "insights-utilisation-desktop.png"))

            # Service list: the refuelling round first, numbered on the map.
            await page.click('.tabs button[data-tab="service"]')
            await page.wait_for_selector("#service-list li")
            stops = await page.locator("#service-list li .stop:not(.none)").count()
            assert stops >= 5
            assert await page.locator("#service-list li .stop").first.inner_text() == "1"
            reasons = await page.locator("#service-list .reason").all_inner_texts()
            assert any("open while parked" in text for text in reasons)
            assert any(text.startswith("offline for") for text in reasons)
            assert await page.locator(".route-icon span").count() >= stops
            await page.screenshot(path=str(ARTIFACTS / "insights-service-desktop.png"))

            # A car's trips; one of them on the map with its track.
            await page.goto(f"{base}#trips/{busiest}")
            await page.wait_for_selector("#trip-list li")
            listed = await page.locator("#trip-list li").count()
            assert listed == sum(t.vin == busiest for t in fleet.trips)
            await page.locator("#trip-list li").nth(1).click()
            points = await _wait_for(page, "window.tgwInsights.trackPoints", 15, "a track")
            assert points > 10
            await page.wait_for_selector("#trip-detail:not([hidden])")
            await page.wait_for_timeout(400)
            await page.screenshot(path=str(ARTIFACTS / "insights-trips-desktop.png"))

            # The same three pages on a phone.
            await page.set_viewport_size(PHONE)
            await page.wait_for_timeout(600)
            await _no_overflow(page)
            assert await page.is_visible("#trip-list")
            await page.screenshot(path=str(ARTIFACTS / "insights-trips-phone.png"))
            await page.click('.tabs button[data-tab="service"]')
            await page.wait_for_selector("#service-list li")
            await page.wait_for_timeout(400)
            await _no_overflow(page)
            await page.screenshot(path=str(ARTIFACTS / "insights-service-phone.png"))
            await page.click('.tabs button[data-tab="utilisation"]')
            await _wait_for(page, "window.tgwInsights.cellsDrawn", 10, "cells again")
            await page.wait_for_timeout(600)
            await _no_overflow(page)
            assert await page.is_visible("#u-week")
            assert await page.is_visible("#map")
            await page.screenshot(path=str(ARTIFACTS / "insights-utilisation-phone.png"))
            # Scrolled down: the models and the least used cars.
            await page.locator("#u-idle").scroll_into_view_if_needed()
            await page.screenshot(path=str(ARTIFACTS / "insights-utilisation-phone-scrolled.png"))
            assert errors == []
        finally:
            await browser.close()
