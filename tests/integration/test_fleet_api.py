"""The fleet API on the real database: filters, pages, history in both storage modes, events,
dead letters, roles, the live stream and the console's files."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.api.console import STATIC_DIR
from gateway.auth import Role, TokenStore
from gateway.commands.signing import KeyPairFiles
from gateway.config import Settings
from gateway.devstack import MosquittoBroker
from gateway.fleet import ALERT_KINDS, alerts_for
from tests.integration.command_support import api, command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import SEEDED, FleetSeed, seed_fleet, wait_http
from tests.integration.ingest_support import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROBLEM = "application/problem+json"


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return make_keys(tmp_path / "keys")


@asynccontextmanager
async def fleet_gateway(
    broker: MosquittoBroker, dsn: str, keys: KeyPairFiles
) -> AsyncIterator[tuple[Settings, dict[str, str]]]:
    """A gateway over a seeded fleet, and a token per role."""
    await seed_fleet(dsn)
    settings = command_gateway_settings(broker, dsn, keys)
    tokens = {role.value: await make_token(dsn, f"t-{role.value}", role) for role in Role}
    async with running_gateway(settings):
        await wait_http(settings)
        yield settings, tokens


def vins(page: dict[str, Any]) -> list[str]:
    return [item["vin"] for item in page["items"]]


async def test_vehicles_filter_and_page(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    seed = SEEDED
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
    ):

        async def listed(**params: Any) -> list[str]:
            response = await client.get("/v1/vehicles", params=params)
            assert response.status_code == 200, response.text
            return sorted(vins(response.json()))

        assert await listed() == seed.all
        online = await listed(online="true")
        assert seed.offline not in online
        assert seed.stale not in online
        assert await listed(online="false") == sorted([seed.offline, seed.stale])
        assert seed.low_fuel in await listed(locked="false")
        assert seed.parked_ok not in await listed(locked="false")
        # Fuel, or charge for electric cars.
        assert await listed(fuel_below=15) == sorted([seed.low_fuel, seed.ev_low])
        assert await listed(bbox="11.59,48.14,11.61,48.16") == [seed.low_fuel]
        assert await listed(model="bmw_e8x") == sorted([seed.low_fuel, seed.driving])
        assert await listed(q=seed.driving[-6:].lower()) == [seed.driving]
        assert await listed(alert="door_open_parked") == [seed.low_fuel]
        assert await listed(alert="low_battery") == [seed.stale]

        # Pages of two cover every car once, in VIN order, with the total on each page.
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/v1/vehicles", params=params)).json()
            assert page["total"] == 6
            seen += vins(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == seed.all

        bad = await client.get("/v1/vehicles", params={"bbox": "1,2,3"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == PROBLEM
        assert "bbox" in bad.json()["detail"]
        bad = await client.get("/v1/vehicles", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 422
        assert bad.json()["type"].endswith("/invalid-cursor")


async def test_one_vehicle_with_alerts_and_clear_errors(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    seed = SEEDED
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
    ):
        car = (await client.get(f"/v1/vehicles/{seed.low_fuel}")).json()
        assert car["model"] == "bmw_e8x"
        assert car["fuel"] == 9.0
        assert car["door_fl_open"] is True
        assert car["capabilities"] == ["lock", "unlock"]
        kinds = [alert["kind"] for alert in car["alerts"]]
        assert kinds == ["door_open_parked", "low_fuel"]
        assert "front left door open while parked" in car["alerts"][0]["message"]

        stale = (await client.get(f"/v1/vehicles/{seed.stale}")).json()
        assert stale["online"] is False
        assert stale["connected"] is True
        assert "silent" in stale["alerts"][0]["message"]

        unknown = await client.get("/v1/vehicles/WBA00000000000000")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM
        assert unknown.json()["detail"] == "vehicle WBA00000000000000 is unknown to this fleet"
        invalid = await client.get("/v1/vehicles/not-a-vin")
        assert invalid.status_code == 422
        assert invalid.json()["type"].endswith("/invalid-vin")

        me = (await client.get("/v1/whoami")).json()
        assert me == {"name": "t-viewer", "role": "viewer"}


async def test_history_is_downsampled_in_both_storage_modes(
    private_broker: MosquittoBroker,
    migrated_database_any_mode: tuple[str, str],
    keys: KeyPairFiles,
) -> None:
    mode, dsn = migrated_database_any_mode
    seed = SEEDED
    start = seed.history_start
    async with (
        fleet_gateway(private_broker, dsn, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
    ):
        url = f"/v1/vehicles/{seed.driving}/telemetry"
        params = {"from": start.isoformat(), "to": (start + timedelta(minutes=10)).isoformat()}
        history = (await client.get(url, params=params | {"bucket_s": 60})).json()
        assert history["storage_mode"] == mode
        assert history["bucket_s"] == 60
        assert history["from"] == start.isoformat().replace("+00:00", "Z")
        points = history["points"]
        assert len(points) == 10
        assert [p["samples"] for p in points] == [60] * 10
        first = points[0]
        assert first["speed_max"] == 59.0
        assert first["speed_avg"] == pytest.approx(29.5)
        # Last position and fuel of the bucket; highest odometer; lowest voltage.
        assert first["lat"] == pytest.approx(48.13 + 59e-5)
        assert first["fuel"] == pytest.approx(70.0 - 59 * 0.01, abs=1e-4)
        assert first["odometer"] == pytest.approx(12000.59)
        assert first["batt_v"] == pytest.approx(12.4)
        assert first["ignition"] is True

        # Without a bucket width, one is chosen to fit max_points.
        auto = (await client.get(url, params=params | {"max_points": 50})).json()
        assert auto["bucket_s"] == 15
        assert len(auto["points"]) == 40
        assert sum(p["samples"] for p in auto["points"]) == seed.history_samples

        # The range starts at `from`: buckets are aligned on it, not on the epoch.
        offset = (await client.get(
            url,
            params={
                "from": (start + timedelta(seconds=30)).isoformat(),
                "to": (start + timedelta(seconds=90)).isoformat(),
                "bucket_s": 60,
            },
        )).json()  # fmt: skip
        assert [p["samples"] for p in offset["points"]] == [60]

        empty = (await client.get(url)).json()  # default: the last hour, nothing there
        assert empty["points"] == []

        reversed_range = await client.get(url, params={"from": params["to"], "to": params["from"]})
        assert reversed_range.status_code == 422
        too_long = await client.get(
            url, params={"from": start.isoformat(), "to": (start + timedelta(days=40)).isoformat()}
        )
        assert too_long.status_code == 422
        assert "split the range" in too_long.json()["detail"]
        unknown = await client.get("/v1/vehicles/WBA00000000000000/telemetry")
        assert unknown.status_code == 404


async def test_events_newest_first_with_pages(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    seed = SEEDED
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
    ):
        url = f"/v1/vehicles/{seed.driving}/events"
        everything = (await client.get(url)).json()["items"]
        assert [e["seq"] for e in everything] == list(range(10_006, 9_999, -1))
        doors = (await client.get(url, params={"type": "door_opened"})).json()["items"]
        assert {e["type"] for e in doors} == {"door_opened"}
        assert len(doors) == 3
        assert doors[0]["data"] == {"door": "fl"}

        paged: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/v1/events", params=params)).json()
            paged += [e["seq"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert paged == [e["seq"] for e in everything]
        window = await client.get(
            url,
            params={
                "from": seed.history_start.isoformat(),
                "to": (seed.history_start + timedelta(seconds=20)).isoformat(),
            },
        )
        assert [e["seq"] for e in window.json()["items"]] == [10_001, 10_000]


async def test_roles_dead_letters_and_commands(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    seed = SEEDED
    async with fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens):
        async with api(settings) as anonymous:
            response = await anonymous.get("/v1/vehicles")
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == PROBLEM
            assert (await anonymous.get("/v1/fleet/stream")).status_code == 401
        async with api(settings, "tgw_" + "x" * 43) as forged:
            assert (await forged.get("/v1/vehicles")).status_code == 401

        async with api(settings, tokens["viewer"]) as viewer:
            refused = await viewer.post(
                f"/v1/vehicles/{seed.parked_ok}/commands", json={"action": "unlock"}
            )
            assert refused.status_code == 403
            assert "needs operator" in refused.json()["detail"]
            assert (await viewer.get("/v1/dead-letters")).status_code == 403
        async with api(settings, tokens["operator"]) as operator:
            assert (await operator.get("/v1/dead-letters")).status_code == 403
            sent = await operator.post(
                f"/v1/vehicles/{seed.parked_ok}/commands", json={"action": "unlock"}
            )
            assert sent.status_code == 202, sent.text
            assert sent.json()["requested_by"] == "t-operator"
        async with api(settings, tokens["admin"]) as admin:
            letters = (await admin.get("/v1/dead-letters")).json()["items"]
            assert len(letters) == 1
            assert letters[0]["reason"] == "schema"
            assert letters[0]["payload_preview"] == '{"speed":1e9'
            assert letters[0]["payload_size"] == 12
            none = (await admin.get("/v1/dead-letters", params={"reason": "too_large"})).json()
            assert none["items"] == []

        async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
            await TokenStore(conn).revoke("t-viewer", revoked_by="test")
            await conn.commit()
        async with api(settings, tokens["viewer"]) as revoked:
            response = await revoked.get("/v1/vehicles")
            assert response.status_code == 401
            assert "revoked" in response.json()["detail"]


async def test_sql_alert_filter_agrees_with_alerts_for(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
    ):
        cars = (await client.get("/v1/vehicles")).json()["items"]
        for kind in ALERT_KINDS:
            expected = sorted(car["vin"] for car in cars if kind in alerts_for(car))
            got = vins((await client.get("/v1/vehicles", params={"alert": kind})).json())
            assert sorted(got) == expected, kind


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def test_stream_sends_a_snapshot_then_only_changes(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    seed: FleetSeed = SEEDED
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, tokens),
        api(settings, tokens["viewer"]) as client,
        client.stream("GET", "/v1/fleet/stream") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)
        kind, snapshot = await anext(events)
        assert kind == "snapshot"
        fields = snapshot["fields"]
        rows = {row[0]: dict(zip(fields, row, strict=True)) for row in snapshot["rows"]}
        assert sorted(rows) == seed.all
        assert rows[seed.low_fuel]["alerts"] == ["door_open_parked", "low_fuel"]

        async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
            await conn.execute(
                "UPDATE latest_state SET lat = 48.2, speed = 33, updated_at = now() WHERE vin = %s",
                (seed.driving,),
            )
            await conn.commit()
        kind, changes = await asyncio.wait_for(anext(events), 10)
        assert kind == "changes"
        assert [row[0] for row in changes["rows"]] == [seed.driving]
        changed = dict(zip(fields, changes["rows"][0], strict=True))
        assert changed["lat"] == 48.2
        assert changed["speed"] == 33.0


async def test_console_is_served_with_everything_local(
    private_broker: MosquittoBroker, migrated_database: str, keys: KeyPairFiles
) -> None:
    async with (
        fleet_gateway(private_broker, migrated_database, keys) as (settings, _),
        api(settings) as client,
    ):
        root = await client.get("/")
        assert root.status_code == 307
        assert root.headers["location"] == "/console/"
        page = await client.get("/console/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not asset.startswith(("http:", "https:", "//")), asset
            if asset.startswith("data:"):
                continue
            assert (await client.get(f"/console/{asset}")).status_code == 200, asset
        spec = (await client.get("/v1/openapi.json")).json()
        assert "/v1/vehicles/{vin}/telemetry" in spec["paths"]
    # No file the console ships loads anything from another host.
    for path in STATIC_DIR.rglob("*"):
        if path.suffix in {".html", ".js", ".css"} and "vendor" not in path.parts:
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""["'(]https?://""", text), path
