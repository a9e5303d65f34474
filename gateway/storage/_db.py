"""Small psycopg helpers shared by the storage modules (private)."""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg.rows import tuple_row

__all__ = ["AnyConnection", "fetch_all", "fetch_one", "fetch_value"]

AnyConnection = psycopg.AsyncConnection[Any]
"""A connection with any row factory: the helpers below always read plain tuples."""


async def fetch_all(
    conn: AnyConnection, query: LiteralString, params: tuple[Any, ...] | None = None
) -> list[tuple[Any, ...]]:
    """Run one query and return its rows as tuples, whatever the connection's row factory."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def fetch_one(
    conn: AnyConnection, query: LiteralString, params: tuple[Any, ...] | None = None
) -> tuple[Any, ...] | None:
    """Run one query and return its first row as a tuple (None when there is none)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def fetch_value(
    conn: AnyConnection, query: LiteralString, params: tuple[Any, ...] | None = None
) -> Any:
    """Run one query and return the first column of its first row (None when no row)."""
    row = await fetch_one(conn, query, params)
    return None if row is None else row[0]
