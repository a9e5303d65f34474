"""`tgw insights refresh | rebuild` as an operator runs them against the database."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.insights_support import simulate_fleet, store
from tests.integration.test_commands_cli import tgw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_refresh_then_rebuild_say_what_they_did(migrated_database: str) -> None:
    dsn = migrated_database
    fleet = await asyncio.to_thread(simulate_fleet, 3, 4, seed=5)
    await store(dsn, fleet.samples, fleet.events, models=fleet.models)

    first = await tgw("insights", "refresh", "--dsn", dsn)
    assert first.code == 0, first.err
    # The first refresh derives everything; nothing was open before it, so nothing continued.
    assert first.out.startswith("rebuilt: 3 car(s) (0 open trip(s) continued), "), first.out
    assert f"{len(fleet.trips)} trip(s) written" in first.out

    again = await tgw("insights", "refresh", "--dsn", dsn)
    assert again.code == 0, again.err
    assert again.out.startswith("refreshed: 0 car(s)"), again.out

    rebuilt = await tgw("insights", "rebuild", "--dsn", dsn)
    assert rebuilt.code == 0, rebuilt.err
    assert f"{len(fleet.trips)} trip(s) written ({len(fleet.trips)} replaced)" in rebuilt.out

    wrong = await tgw("insights", "rebuild", "--since", "yesterday-ish", "--dsn", dsn)
    assert wrong.code != 0
    assert "Traceback" not in wrong.out + wrong.err
    assert "--since" in wrong.out + wrong.err
