"""The insights API through a running gateway: trips and tracks, areas, pages, utilisation,
service list, wear, the refresh trigger, roles and problem details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import Role
from gateway.config import Settings
from gateway.devstack import MosquittoBroker
from gateway.insights import cell_of
from tests.integration.command_support import api, command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import wait_http
from tests.integration.ingest_support import running_gateway
from tests.integration.insights_support import T0, ScriptedCar, simulate_fleet, store
from tests.integration.test_insights_figures import CENTRE, small_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEM = "application/problem+json"


@asynccontextmanager
async def insights_gateway(
    broker: MosquittoBroker, dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[Settings, dict[str, str], tuple[ScriptedCar, ...]]]:
    cars = small_fleet()
    await store(dsn, [s for c in cars for s in c.samples], models={c.vin: c.model for c in cars})
    settings = command_gateway_settings(
        broker, dsn, make_keys(tmp_path / "keys"), operating_areas={"centre": CENTRE}
    )
    tokens = {role.value: await make_token(dsn, f"t-{role.value}", role) for role in Role}
    async with running_gateway(settings):
        await wait_http(settings)
        yield settings, tokens, cars


async def _trips_derived(client: httpx.AsyncClient, vin: str) -> list[dict[str, Any]]:
    # The gateway's refresher builds everything once at start-up; wait until it recorded that
    # it is done (never a fixed sleep).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await client.get("/v1/insights/utilisation")
        assert response.status_code == 200, response.text
        if response.json()["refreshed_at"] is not None:
            break
        await asyncio.sleep(0.2)
    params = {"from": (T0 - timedelta(hours=1)).isoformat()}
    response = await client.get(f"/v1/vehicles/{vin}/trips", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_trips_tracks_areas_and_pages(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    async with (
        insights_gateway(private_broker, migrated_database, tmp_path) as (settings, tokens, cars),
        api(settings, tokens["viewer"]) as client,
    ):
        a, _, c = cars
        (trip,) = await _trips_derived(client, a.vin)
        (true_trip,) = a.trips
        assert trip["vin"] == a.vin
        assert trip["model"] == "tgw_generic"
        assert trip["in_progress"] is False
        assert trip["detected_by"] == "ignition"
        assert trip["distance_km"] == pytest.approx(10.0)
        assert trip["distance_check"] == "ok"
        assert trip["duration_s"] == (true_trip.end - true_trip.start).total_seconds()  # type: ignore[operator]
        assert trip["start"] == {"lat": 48.137, "lon": 11.575}
        assert trip["fuel_used_pct"] == 0.0
        assert trip["track"] is None

        one = await client.get(f"/v1/vehicles/{a.vin}/trips/{trip['id']}")
        assert one.status_code == 200, one.text
        track = one.json()["track"]
        assert len(track) == trip["samples"]
        assert track[0]["lat"] == 48.137
        assert track[-1]["lon"] == pytest.approx(trip["end"]["lon"])
        short = await client.get(
            f"/v1/vehicles/{a.vin}/trips/{trip['id']}", params={"max_points": 10}
        )
        assert len(short.json()["track"]) == 10
        assert short.json()["track"][-1] == track[-1]

        missing = await client.get(f"/v1/vehicles/{a.vin}/trips/{int(trip['id']) + 5000}")
        assert missing.status_code == 404
        assert missing.json()["type"].endswith("/unknown-trip")
        unknown = await client.get("/v1/vehicles/WBA00000000000000/trips")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM
        invalid = await client.get("/v1/vehicles/not-a-vin/trips")
        assert invalid.status_code == 422

        window = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=6)).isoformat()}
        everything = (await client.get("/v1/trips", params=window)).json()
        assert [t["vin"] for t in everything["items"]] == [c.vin, a.vin]  # newest first
        centre = (await client.get("/v1/trips", params=window | {"area": "centre"})).json()
        assert {t["vin"] for t in centre["items"]} == {a.vin, c.vin}
        a_end = cell_of(trip["end"]["lat"], trip["end"]["lon"]).key
        ended = (await client.get("/v1/trips", params=window | {"area": a_end})).json()
        assert [t["vin"] for t in ended["items"]] == [a.vin]
        model = (await client.get("/v1/trips", params=window | {"model": "vw_mqb"})).json()
        assert [t["vin"] for t in model["items"]] == [c.vin]
        nowhere = await client.get("/v1/trips", params=window | {"area": "atlantis"})
        assert nowhere.status_code == 422
        assert "centre" in nowhere.json()["detail"]

        first = (await client.get("/v1/trips", params=window | {"limit": 1})).json()
        assert first["next_cursor"]
        second = (
            await client.get(
                "/v1/trips", params=window | {"limit": 1, "cursor": first["next_cursor"]}
            )
        ).json()
        assert [t["vin"] for t in first["items"] + second["items"]] == [c.vin, a.vin]
        assert second["next_cursor"] is None
        bad_cursor = await client.get("/v1/trips", params={"cursor": "1.WBA00000000000000"})
        assert bad_cursor.status_code == 200  # a well-formed cursor past everything: empty
        backwards = await client.get(
            "/v1/trips", params={"from": window["to"], "to": window["from"]}
        )
        assert backwards.status_code == 422
        too_long = await client.get(
            "/v1/trips",
            params={"from": T0.isoformat(), "to": (T0 + timedelta(days=40)).isoformat()},
        )
        assert too_long.json()["type"].endswith("/range-too-long")


async def test_utilisation_service_wear_and_roles(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    async with insights_gateway(private_broker, migrated_database, tmp_path) as (
        settings,
        tokens,
        cars,
    ):
        a, b, c = cars
        window = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=4)).isoformat()}
        async with api(settings, tokens["viewer"]) as viewer:
            await _trips_derived(viewer, a.vin)
            cells = await viewer.get("/v1/insights/utilisation", params=window | {"group": "cell"})
            assert cells.status_code == 200, cells.text
            body = cells.json()
            assert body["group_by"] == "cell"
            assert len(body["by_hour"]) == 24
            assert len(body["by_weekday"]) == 7
            assert len(body["week"]) == 7 * 24
            start_cell = cell_of(48.137, 11.575).key
            (centre,) = [g for g in body["groups"] if g["key"] == start_cell]
            assert centre["rented_s"] == 1806.0 + 3633.0
            assert len(centre["bounds"]) == 4
            assert body["refreshed_at"] is not None

            areas = (
                await viewer.get(
                    "/v1/insights/utilisation",
                    params=window | {"group": "area", "tz": "Europe/Berlin"},
                )
            ).json()
            assert {g["key"] for g in areas["groups"]} == {"centre", "(outside)"}
            one_car = (
                await viewer.get(
                    "/v1/insights/utilisation", params=window | {"group": "car", "vin": b.vin}
                )
            ).json()
            assert [g["key"] for g in one_car["groups"]] == [b.vin]
            assert one_car["groups"][0]["rented_share"] == 0.0
            # The console's idle list: the longest idle car only, counted among all three.
            idle = (
                await viewer.get(
                    "/v1/insights/utilisation",
                    params=window | {"group": "car", "sort": "idle", "limit": 1},
                )
            ).json()
            assert [g["key"] for g in idle["groups"]] == [b.vin]
            assert (idle["groups_total"], idle["total"]["cars"]) == (3, 3)
            for bad in (
                {"tz": "Mars/Olympus_Mons"},
                {"group": "planet"},
                {"vin": "nope"},
                {"from": "2025-01-01T00:00:00Z", "to": "2025-12-01T00:00:00Z"},
                {"limit": 0},
                {"limit": 10_001},
                {"offset": -1},
                {"sort": "alphabet"},
            ):
                refused = await viewer.get("/v1/insights/utilisation", params=bad)
                assert refused.status_code == 422, bad
                assert refused.headers["content-type"] == PROBLEM
            refused = await viewer.get(
                "/v1/insights/utilisation", params={"group": "model", "sort": "idle"}
            )
            assert refused.status_code == 422
            assert "use it with group=car" in refused.json()["detail"]

            service = await viewer.get(
                "/v1/insights/service", params={"from": "48.137,11.575", "idle_hours": 1}
            )
            assert service.status_code == 200, service.text
            listed = {item["vin"]: item for item in service.json()["items"]}
            # A was last rented two days ago, B never: relocation candidates.
            assert [r["kind"] for r in listed[a.vin]["reasons"]] == ["not_rented"]
            assert listed[b.vin]["reasons"][0]["message"].startswith("never rented in")
            refused = await viewer.get("/v1/insights/service", params={"from": "north"})
            assert refused.status_code == 422

            wear = await viewer.get("/v1/insights/wear", params=window | {"group": "model"})
            assert wear.status_code == 200, wear.text
            assert wear.json()["fleet"]["km"] == pytest.approx(15.0)
            per_car = (
                await viewer.get("/v1/insights/wear", params=window | {"group": "car"})
            ).json()
            assert {row["key"] for row in per_car["rows"]} == {a.vin, c.vin}

            forbidden = await viewer.post("/v1/insights/refresh")
            assert forbidden.status_code == 403
            assert forbidden.headers["content-type"] == PROBLEM
        async with api(settings, tokens["operator"]) as operator:
            assert (await operator.post("/v1/insights/refresh")).status_code == 403
        async with api(settings, tokens["admin"]) as admin:
            refreshed = await admin.post("/v1/insights/refresh")
            assert refreshed.status_code == 200, refreshed.text
            assert refreshed.json()["rebuild"] is False
            assert 0 <= refreshed.json()["cars_continued"] <= refreshed.json()["cars"]
        async with api(settings) as anonymous:
            for path in (
                "/v1/trips",
                f"/v1/vehicles/{a.vin}/trips",
                "/v1/insights/utilisation",
                "/v1/insights/service",
                "/v1/insights/wear",
            ):
                response = await anonymous.get(path)
                assert response.status_code == 401, path
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert (await anonymous.post("/v1/insights/refresh")).status_code == 401


async def _refresh_now(client: httpx.AsyncClient) -> dict[str, Any]:
    """POST a refresh until it is not skipped (the task's own turn may be running)."""
    deadline = time.monotonic() + 30
    while True:
        response = await client.post("/v1/insights/refresh")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        if not result["skipped"] or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


async def test_trips_survive_gateway_restarts_with_data_in_between(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    """The gateway's own refresher task: data arrives while it runs and while it is down."""
    dsn = migrated_database
    fleet = await asyncio.to_thread(simulate_fleet, 4, 6, seed=17)
    half = T0 + timedelta(hours=3)
    first = [s for s in fleet.samples if s.time < half]
    second = [s for s in fleet.samples if s.time >= half]
    settings = command_gateway_settings(private_broker, dsn, make_keys(tmp_path / "keys"))
    admin = await make_token(dsn, "t-admin", Role.ADMIN)
    await store(dsn, first, models=fleet.models, received_at=datetime.now(UTC))
    async with running_gateway(settings), api(settings, admin) as client:
        await wait_http(settings)
        await _trips_derived(client, sorted(fleet.models)[0])
        # More data while it runs: an on-demand refresh takes it in.
        await store(dsn, second[: len(second) // 2], received_at=datetime.now(UTC))
        await _refresh_now(client)
    # The rest arrives while the gateway is down; the restarted one picks it up.
    await store(dsn, second[len(second) // 2 :], received_at=datetime.now(UTC))
    async with running_gateway(settings), api(settings, admin) as client:
        await wait_http(settings)
        refreshed = await _refresh_now(client)
        assert refreshed["rebuild"] is False
        everything = (
            await client.get(
                "/v1/trips",
                params={
                    "from": (T0 - timedelta(hours=1)).isoformat(),
                    "to": (T0 + timedelta(hours=8)).isoformat(),
                    "limit": 500,
                },
            )
        ).json()["items"]
    derived = sorted((t["vin"], t["start_time"]) for t in everything)
    assert len(derived) == len(set(derived)) == len(fleet.trips)
    for trip in everything:
        true = min(
            (t for t in fleet.trips if t.vin == trip["vin"]),
            key=lambda t: abs(
                (t.start - datetime.fromisoformat(trip["start_time"])).total_seconds()
            ),
        )
        assert abs((true.start - datetime.fromisoformat(trip["start_time"])).total_seconds()) <= 1
        if true.end is not None:
            assert trip["distance_km"] == pytest.approx(true.km, rel=0.01, abs=0.005)
