"""Property-based tests of the operator API against its own OpenAPI document (schemathesis).

For every operation, schemathesis generates requests from the published spec (valid and
invalid), sends them to a real gateway over a seeded fleet with an admin token, and checks each
answer: no server error, a status code and content type the spec declares, a body that matches
the declared schema. The live streams (server-sent events) never end, so they are left out.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles
from gateway.devstack import MosquittoBroker
from tests.integration.command_support import command_gateway_settings, make_keys, make_token
from tests.integration.fleet_support import seed_fleet, wait_http
from tests.integration.ingest_support import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STREAMS = r"(/stream|/commands/events|/commands/\{command_id\}/events)$"
EXAMPLES = 30


def _check_every_operation(spec: dict[str, Any], base_url: str, token: str) -> list[str]:
    """Run the generated cases of each operation; return one line per failing operation."""
    schema = schemathesis.openapi.from_dict(spec).exclude(path_regex=STREAMS)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            # Cross-field rules (`to` after `from`, at most 31 days, a cursor this API issued)
            # cannot be written in OpenAPI: a schema-valid request may rightly get a 422.
            case.call_and_validate(
                base_url=base_url, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collected per operation, reported together
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    return failures


async def test_every_operation_conforms_to_the_openapi_document(
    mqtt_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    keys: KeyPairFiles = make_keys(tmp_path / "keys")
    await seed_fleet(migrated_database)
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "schema-admin", Role.ADMIN)
    base_url = f"http://127.0.0.1:{settings.http.port}"
    async with running_gateway(settings):
        await wait_http(settings)
        async with httpx.AsyncClient(base_url=base_url) as client:
            spec = (await client.get("/v1/openapi.json")).json()
        failures = await asyncio.to_thread(_check_every_operation, spec, base_url, token)
    assert not failures, "\n\n".join(failures)
