"""Token checks against the real database: a burst shares one check, revocation still bites.

Requests that present one token at the same moment share the database check that is on its
way (one round trip for a booking backend's burst); the next request after a revocation is
refused; an unknown token is refused without any connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.auth import Principal, Role, TokenAuthenticator, TokenStore

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def pool(
    migrated_database: str,
) -> AsyncIterator[Pool]:
    async with AsyncConnectionPool(migrated_database, min_size=1, max_size=4, open=False) as pool:
        await pool.open(wait=True)
        yield pool


async def _token(pool: Pool, name: str) -> str:
    async with pool.connection() as conn:
        _, secret = await TokenStore(conn).create(name, Role.OPERATOR, created_by="test")
        await conn.commit()
    return secret


async def test_a_burst_shares_one_check(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = await _token(pool, "booking")
    authenticator = TokenAuthenticator(pool)
    checks = 0
    check = authenticator._check

    async def counted(presented: str) -> Principal | None:
        nonlocal checks
        checks += 1
        return await check(presented)

    monkeypatch.setattr(authenticator, "_check", counted)
    principals = await asyncio.gather(*(authenticator.authenticate(secret) for _ in range(50)))
    assert principals == [Principal("booking", Role.OPERATOR)] * 50
    assert checks == 1
    # Checked again for the next request: nothing is kept once the check has answered.
    assert await authenticator.authenticate(secret) == Principal("booking", Role.OPERATOR)
    assert checks == 2


async def test_the_request_after_a_revocation_is_refused(
    pool: Pool,
) -> None:
    secret = await _token(pool, "otto")
    authenticator = TokenAuthenticator(pool)
    assert await authenticator.authenticate(secret) == Principal("otto", Role.OPERATOR)
    async with pool.connection() as conn:
        await TokenStore(conn).revoke("otto", revoked_by="test")
        await conn.commit()
    assert await authenticator.authenticate(secret) is None
    assert await authenticator.authenticate("tgw_" + "x" * 40) is None


async def test_a_request_that_goes_away_does_not_cancel_the_others(
    pool: Pool,
) -> None:
    secret = await _token(pool, "booking")
    authenticator = TokenAuthenticator(pool)
    first = asyncio.create_task(authenticator.authenticate(secret))
    second = asyncio.create_task(authenticator.authenticate(secret))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == Principal("booking", Role.OPERATOR)
    with pytest.raises(asyncio.CancelledError):
        await first
