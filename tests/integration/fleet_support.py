"""Helpers for fleet API tests: a known fleet written straight into the database."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from device_sim.identity import make_vin  # tests may import anything: realistic VINs
from gateway.config import Settings
from tests.integration.ingest_support import WAIT_S, fetch

__all__ = ["SEEDED", "FleetSeed", "seed_fleet", "wait_http"]

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class FleetSeed:
    """The seeded cars by role in the tests, and the history's time range."""

    parked_ok: str  # online, locked, full tank, in the centre
    low_fuel: str  # online, unlocked, 9 % fuel, door open while parked
    ev_low: str  # online, electric, 12 % charge
    offline: str  # last will seen
    stale: str  # connected but silent
    driving: str  # online, driving north, 60 % fuel; has the history and the events
    history_start: datetime
    history_samples: int

    @property
    def all(self) -> list[str]:
        return sorted(
            [self.parked_ok, self.low_fuel, self.ev_low, self.offline, self.stale, self.driving]
        )


def _vins() -> list[str]:
    import random  # noqa: PLC0415  # only here

    rng = random.Random(42)  # test data: the same six VINs each run
    return [make_vin(rng) for _ in range(6)]


_CARS = _vins()
SEEDED = FleetSeed(*_CARS, history_start=T0, history_samples=600)

_STATE_COLUMNS = (
    "vin, time, boot_id, seq, lat, lon, heading, speed, fuel, soc, odometer, batt_v, ignition, "
    "locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open"
)


def _state(vin: str, **signals: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = {
        "lat": 48.137,
        "lon": 11.575,
        "heading": 0.0,
        "speed": 0.0,
        "fuel": 80.0,
        "soc": None,
        "odometer": 12000.0,
        "batt_v": 12.6,
        "ignition": False,
        "locked": True,
        "door_fl_open": False,
        "door_fr_open": False,
        "door_rl_open": False,
        "door_rr_open": False,
        "trunk_open": False,
    }
    base.update(signals)
    return (vin, T0 + timedelta(hours=1), "boot-1", 1000, *base.values())


async def seed_fleet(dsn: str, seed: FleetSeed = SEEDED) -> FleetSeed:
    """Write six cars in known states, 10 minutes of 1 Hz telemetry and events for one."""
    now = datetime.now(UTC)
    vehicles = [
        (seed.parked_ok, "tgw_generic", True, False),
        (seed.low_fuel, "bmw_e8x", True, False),
        (seed.ev_low, "tgw_generic_ev", True, False),
        (seed.offline, "vw_mqb", False, False),
        (seed.stale, "tgw_generic", True, True),
        (seed.driving, "bmw_e8x", True, False),
    ]
    states = [
        _state(seed.parked_ok),
        _state(seed.low_fuel, fuel=9.0, locked=False, door_fl_open=True, lat=48.15, lon=11.60),
        _state(seed.ev_low, fuel=None, soc=12.0, lat=48.10, lon=11.50),
        _state(seed.offline, lat=48.20, lon=11.70),
        _state(seed.stale, batt_v=11.5),
        _state(seed.driving, speed=42.0, fuel=60.0, ignition=True, locked=False, lat=48.14),
    ]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO vehicles (vin, model, online, stale, online_changed_at, last_seen_at,"
                " capabilities) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (vin, model, online, stale, now, now, ["lock", "unlock"])
                    for vin, model, online, stale in vehicles
                ],
            )
            await cur.executemany(
                f"INSERT INTO latest_state ({_STATE_COLUMNS}) VALUES "  # column list is a constant
                f"({', '.join(['%s'] * 19)})",
                states,
            )
            async with cur.copy(
                "COPY telemetry (time, vin, boot_id, seq, lat, lon, speed, fuel, odometer, "
                "batt_v, locked, ignition) FROM STDIN"
            ) as copy:
                for i in range(seed.history_samples):
                    await copy.write_row(
                        (
                            seed.history_start + timedelta(seconds=i),
                            seed.driving,
                            "boot-1",
                            i,
                            48.13 + i * 1e-5,
                            11.57,
                            float(i % 60),
                            70.0 - i * 0.01,
                            12000.0 + i * 0.01,
                            12.4,
                            False,
                            True,
                        )
                    )
            await cur.executemany(
                "INSERT INTO events (time, vin, boot_id, seq, type, data) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (
                        seed.history_start + timedelta(seconds=10 * i),
                        seed.driving,
                        "boot-1",
                        10_000 + i,
                        "door_opened" if i % 2 else "ignition_on",
                        Jsonb({"door": "fl"} if i % 2 else {}),
                    )
                    for i in range(7)
                ],
            )
            await cur.execute(
                "INSERT INTO dead_letters (topic, vin, reason, detail, payload, payload_size) "
                "VALUES ('tgw/v1/vehicles/X/telemetry', %s, 'schema', 'speed: too big', %s, 12)",
                (seed.driving, b'{"speed":1e9'),
            )
        await conn.commit()
    assert len(await fetch(dsn, "SELECT vin FROM vehicles")) == 6
    return seed


async def wait_http(settings: Settings) -> None:
    """Until the gateway's HTTP server answers (`ready` is set before uvicorn has bound)."""
    deadline = time.monotonic() + WAIT_S
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http.port}") as client:
        while time.monotonic() < deadline:
            try:
                await client.get("/health")
            except httpx.TransportError:
                await asyncio.sleep(0.05)
            else:
                return
    raise AssertionError("the gateway's HTTP server did not start in time")
