"""The API while the database is down: 503 `database-unavailable` with Retry-After, then back.

Not a 500 with a traceback, and not a request hanging for the pool's wait: the caller is told
what is wrong and when to ask again, and the same request (same Idempotency-Key) is taken once
the database is back, exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles
from gateway.devstack import CarCredentialsFactory, MosquittoBroker, PostgresServer
from tests.integration.command_support import (
    api,
    command_gateway_settings,
    make_keys,
    make_token,
    registered_car,
    wait_status,
)
from tests.integration.ingest_support import fetch, running_gateway

pytestmark = pytest.mark.timeout(120)

KEY = {"Idempotency-Key": "outage-1"}


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return make_keys(tmp_path / "keys")


async def _post_until_taken(client: httpx.AsyncClient, url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        response = await client.post(url, json={"action": "lock"}, headers=KEY)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.5)


@pytest.mark.usefixtures("migrated_templates")
async def test_requests_during_a_database_outage_answer_503_then_the_same_command_is_taken_once(
    mqtt_broker: MosquittoBroker,
    postgres_server: PostgresServer,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    database = settings.database.model_copy(update={"pool_timeout_s": 1.0})
    settings = settings.model_copy(update={"database": database})
    operator = await make_token(migrated_database, "ola", Role.OPERATOR)
    async with (
        running_gateway(settings),
        registered_car(car_credentials(), keys, dsn=migrated_database) as car,
        api(settings, operator) as client,
    ):
        url = f"/v1/vehicles/{car.vin}/commands"
        postgres_server.stop()
        try:
            refused = await client.post(url, json={"action": "lock"}, headers=KEY)
            listed = await client.get(url)
        finally:
            postgres_server.start()
        taken = await _post_until_taken(client, url)
        again = await client.post(url, json={"action": "lock"}, headers=KEY)
        record = await wait_status(client, taken.json()["command_id"], {"executed", "verified"})
    for response in (refused, listed):
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["Retry-After"] == "5"
        problem = response.json()
        assert problem["type"].endswith("/database-unavailable")
        assert "try again in 5 seconds" in problem["detail"]
    assert taken.status_code == 202
    assert again.json()["command_id"] == record["command_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    stored = await fetch(
        migrated_database, "SELECT count(*) FROM commands WHERE vin = %s", (car.vin,)
    )
    assert stored == [(1,)]
