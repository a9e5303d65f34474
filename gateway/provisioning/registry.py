"""The database's side of provisioning: the `vehicles` row and the audit trail.

Registering sets the car's model; connectivity and capabilities come from its own birth
message later. Deprovisioning deletes the row unless commands refer to it: those are the audit
trail of who did what to the car, and are kept (with the row they need).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gateway.errors import StorageError
from gateway.storage import connect

__all__ = ["Registration", "VehicleRegistry"]

_REGISTER = """
INSERT INTO vehicles AS v (vin, model) VALUES (%s, %s)
ON CONFLICT (vin) DO UPDATE SET model = EXCLUDED.model
"""
_AUDIT = "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class Registration:
    """What deprovisioning did to the `vehicles` row."""

    vin: str
    deleted: bool
    commands_kept: int


class VehicleRegistry:
    """Registers and unregisters cars, and records every provisioning action in `audit_log`.

    Args:
        dsn: the database.
        actor: who acts, for the audit log (e.g. `cli:alice`).
    """

    def __init__(self, dsn: str, actor: str) -> None:
        self._dsn = dsn
        self._actor = actor

    async def register(self, cars: Sequence[tuple[str, str]], action: str) -> None:
        """Insert or update `(vin, model)` rows and audit each, in one transaction."""
        async with await connect(self._dsn, autocommit=False) as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(_REGISTER, list(cars))
                    await cur.executemany(
                        _AUDIT,
                        [
                            (self._actor, action, vin, Jsonb({"model": model}))
                            for vin, model in cars
                        ],
                    )
            except psycopg.Error as exc:
                raise StorageError(f"cannot register the cars: {exc}") from exc

    async def audit(self, vin: str, action: str, detail: dict[str, Any]) -> None:
        """Record one provisioning action."""
        async with await connect(self._dsn) as conn:
            try:
                await conn.execute(_AUDIT, (self._actor, action, vin, Jsonb(detail)))
            except psycopg.Error as exc:
                raise StorageError(f"cannot write the audit log: {exc}") from exc

    async def unregister(self, vin: str) -> Registration:
        """Delete the car's row unless commands refer to it; audit either way."""
        async with await connect(self._dsn, autocommit=False) as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute("SELECT count(*) FROM commands WHERE vin = %s", (vin,))
                    row = await cur.fetchone()
                    kept = int(row[0]) if row else 0
                    deleted = False
                    if kept == 0:
                        await cur.execute("DELETE FROM latest_state WHERE vin = %s", (vin,))
                        await cur.execute("DELETE FROM vehicles WHERE vin = %s", (vin,))
                        deleted = cur.rowcount > 0
                    detail = {"row_deleted": deleted, "commands_kept": kept}
                    await cur.execute(
                        _AUDIT, (self._actor, "vehicle.deprovisioned", vin, Jsonb(detail))
                    )
            except psycopg.Error as exc:
                raise StorageError(f"cannot unregister {vin}: {exc}") from exc
        return Registration(vin, deleted, kept)

    async def registered(self, vin: str) -> bool:
        async with await connect(self._dsn) as conn:
            cur = await conn.execute("SELECT 1 FROM vehicles WHERE vin = %s", (vin,))
            return await cur.fetchone() is not None
