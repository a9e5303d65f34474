"""What the read endpoints share: path and query parameters, the role dependencies, and the
checks that turn bad input and database trouble into problem details (docs/api.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Query

from gateway.api.auth import require
from gateway.api.problems import Problem
from gateway.auth import Principal, Role
from gateway.errors import StorageError
from schemas import VinError, parse_vin

__all__ = [
    "Admin",
    "From",
    "To",
    "Viewer",
    "VinPath",
    "as_utc",
    "checked_vin",
    "guarded",
    "known_vin",
]

T = TypeVar("T")

VinPath = Annotated[str, Path(description="The car's VIN (17 characters, ISO 3779).")]
From = Annotated[
    datetime | None,
    Query(alias="from", description="Start (inclusive), ISO 8601; no zone means UTC."),
]
To = Annotated[
    datetime | None, Query(alias="to", description="End (exclusive), ISO 8601; no zone means UTC.")
]
# Imported into each router's module: with postponed annotations FastAPI resolves these names
# in that module's globals.
Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def checked_vin(vin: str) -> str:
    """The VIN normalised, or a 422 problem saying what is wrong with it."""
    try:
        return parse_vin(vin)
    except VinError as exc:
        raise Problem(422, "invalid-vin", str(exc)) from exc


def as_utc(value: datetime | None) -> datetime | None:
    """A time without a zone is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def guarded(call: Awaitable[T], cursor_errors: tuple[type[Exception], ...] = ()) -> T:
    """Run a store call: a bad paging cursor is a 422, database trouble a 503."""
    try:
        return await call
    except cursor_errors as exc:
        raise Problem(422, "invalid-cursor", f"{exc}: start again without `cursor`") from exc
    except StorageError as exc:
        raise Problem(503, "database-unavailable", f"{exc}; try again shortly") from exc


async def known_vin(vin: str, exists: Callable[[str], Awaitable[bool]]) -> str:
    """The VIN normalised, or a 404 problem when the fleet does not know the car."""
    checked = checked_vin(vin)
    if not await guarded(exists(checked)):
        raise Problem(404, "unknown-vehicle", f"vehicle {checked} is unknown to this fleet")
    return checked
