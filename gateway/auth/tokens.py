"""Operator API bearer tokens with a role: created once, stored hashed, listed, revoked.

A token is `tgw_` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 is
stored: a copy of the database cannot be used to call the API. The token's name is the operator
identity that commands and the audit log record.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.errors import GatewayError, StorageError

__all__ = [
    "ApiToken",
    "Principal",
    "Role",
    "TokenAuthenticator",
    "TokenError",
    "TokenStore",
    "hash_token",
    "new_token",
]

TOKEN_PREFIX = "tgw_"  # noqa: S105  # a recognisable prefix, not a secret
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# Recording each use costs a write; once a minute per token is enough to see who is active.
_LAST_USED_RESOLUTION_S = 60


class Role(StrEnum):
    """What a token may do; each role includes the ones before it."""

    VIEWER = "viewer"  # read the fleet, commands, history
    OPERATOR = "operator"  # ... and send commands
    ADMIN = "admin"  # ... and administer (dead letters, tokens)

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class TokenError(GatewayError):
    """A token cannot be created or revoked as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored token, without the token itself."""

    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_COLUMNS = "id, name, role, created_at, created_by, revoked_at, last_used_at"


def _token(row: tuple[Any, ...]) -> ApiToken:
    return ApiToken(row[0], row[1], Role(row[2]), row[3], row[4], row[5], row[6])


class TokenStore:
    """Tokens in the `api_tokens` table (migration 0003), through any async connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def create(self, name: str, role: Role, *, created_by: str) -> tuple[ApiToken, str]:
        """Create a token; return it and the secret, which is never stored or shown again."""
        if not _NAME_RE.match(name):
            raise TokenError(
                f"token name {name!r} must be 1 to 64 characters from A-Z a-z 0-9 _ . @ - "
                "and start with a letter or digit"
            )
        secret = new_token()
        try:
            async with self._conn.transaction(), self._conn.cursor(row_factory=tuple_row) as cur:
                await cur.execute(
                    f"INSERT INTO api_tokens (name, role, token_hash, created_by) "  # noqa: S608  # column list is a constant
                    f"VALUES (%s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (name, role.value, hash_token(secret), created_by),
                )
                row = await cur.fetchone()
                assert row is not None
                await _audit(cur, created_by, "token.created", name, {"role": role.value})
        except psycopg.errors.UniqueViolation as exc:
            raise TokenError(
                f"a live token named {name!r} exists already: revoke it first "
                f"(`tgw token revoke {name}`) or choose another name"
            ) from exc
        except psycopg.Error as exc:
            raise StorageError(f"cannot store the token: {exc}") from exc
        return _token(row), secret

    async def list(self, *, include_revoked: bool = False) -> list[ApiToken]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        async with self._conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM api_tokens {where} ORDER BY name, id"  # noqa: S608  # constants only
            )
            return [_token(row) for row in await cur.fetchall()]

    async def revoke(self, name: str, *, revoked_by: str) -> ApiToken:
        """Revoke the live token called `name`; it stops working at once."""
        async with self._conn.transaction(), self._conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "UPDATE api_tokens SET revoked_at = now(), revoked_by = %s "  # noqa: S608  # constants only
                f"WHERE name = %s AND revoked_at IS NULL RETURNING {_COLUMNS}",
                (revoked_by, name),
            )
            row = await cur.fetchone()
            if row is None:
                raise TokenError(f"no live token is named {name!r} (see `tgw token list`)")
            await _audit(cur, revoked_by, "token.revoked", name, None)
        return _token(row)

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal a presented token stands for; None if unknown or revoked."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
            return None
        async with self._conn.cursor(row_factory=tuple_row) as cur:
            # One round trip: look the token up, and note its use at most once a minute.
            await cur.execute(
                """
                WITH hit AS (
                    SELECT id, name, role, last_used_at FROM api_tokens
                    WHERE token_hash = %s AND revoked_at IS NULL
                ), touched AS (
                    UPDATE api_tokens t SET last_used_at = now() FROM hit
                    WHERE t.id = hit.id AND (hit.last_used_at IS NULL
                        OR hit.last_used_at < now() - make_interval(secs => %s))
                    RETURNING t.id
                )
                SELECT name, role FROM hit
                """,
                (hash_token(secret), _LAST_USED_RESOLUTION_S),
            )
            row = await cur.fetchone()
        return None if row is None else Principal(row[0], Role(row[1]))


async def _audit(
    cur: psycopg.AsyncCursor[Any], actor: str, action: str, target: str, detail: Any
) -> None:
    await cur.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)",
        (actor, action, f"token:{target}", Jsonb(detail) if detail is not None else None),
    )


class TokenAuthenticator:
    """Checks presented tokens against the database, one pooled connection per check.

    No cache: a revoked token is refused on its next request (docs/security.md). Requests that
    present a token while a check of that same token is on its way to the database share that
    check (a booking backend's burst costs one round trip, not one per request); so a request
    that arrives during the check under way when the token is revoked can still pass, at most
    one round trip (about a millisecond) after the revocation committed.
    """

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._checking: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, secret: str) -> Principal | None:
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
            return None  # not one of ours: no connection needed
        check = self._checking.get(secret)
        if check is None:
            check = asyncio.ensure_future(self._check(secret))
            self._checking[secret] = check
            check.add_done_callback(lambda done: self._finished(secret, done))
        # Shielded: a request that goes away does not cancel the others' check.
        return await asyncio.shield(check)

    def _finished(self, secret: str, check: asyncio.Future[Principal | None]) -> None:
        if self._checking.get(secret) is check:
            del self._checking[secret]
        if not check.cancelled():
            check.exception()  # retrieved: every request that waited for it has it already

    async def _check(self, secret: str) -> Principal | None:
        async with self._pool.connection() as conn:
            # The check is one statement: in autocommit it is one round trip, not three
            # (BEGIN, the statement, and the pool's ROLLBACK when the connection comes back).
            await conn.set_autocommit(True)
            try:
                return await TokenStore(conn).authenticate(secret)
            finally:
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    await conn.set_autocommit(False)  # back as the pool lends it
                else:
                    await conn.close()  # cannot be reset: never lent again
