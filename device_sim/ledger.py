"""The publication ledger: every (VIN, boot id, seq) the broker acknowledged, one per line.

The fault suite and the benchmarks count what the cars published against what the
gateway stored: lost = in the ledger, not stored; duplicated = stored more than once.
A row is written when the broker acknowledges (PUBACK) the message carrying it, once:
a row resent after a lost acknowledgement is written only when its first PUBACK is seen.

File format (CSV, no header): ``vin,boot_id,seq,kind,ts`` with kind ``s`` (sample) or
``e`` (event). Lines are buffered and flushed every `flush_interval_s` and on close.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TextIO

from device_sim.errors import DeviceConfigurationError

__all__ = ["CsvLedger", "Ledger", "NullLedger", "read_ledger"]


class Ledger(Protocol):
    """Where a unit records what the broker acknowledged."""

    def record(self, vin: str, boot_id: str, seq: int, kind: str, ts: int) -> None: ...


class NullLedger:
    """Records nothing (a single car, or a fleet without --ledger)."""

    def record(self, vin: str, boot_id: str, seq: int, kind: str, ts: int) -> None:
        return None


class CsvLedger:
    """Appends ledger lines to a file (an async context manager; close is idempotent)."""

    def __init__(self, path: Path, *, flush_interval_s: float = 1.0) -> None:
        self.path = path
        self._flush_interval_s = flush_interval_s
        self._lines: list[str] = []
        self._handle: TextIO | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.count = 0

    async def __aenter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="ascii")
        except OSError as exc:
            raise DeviceConfigurationError(
                f"cannot write the ledger {self.path}: {exc.strerror}"
            ) from exc
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="ledger-flush"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.write("".join(self._lines))
            self._lines.clear()
            handle.close()

    def record(self, vin: str, boot_id: str, seq: int, kind: str, ts: int) -> None:
        self._lines.append(f"{vin},{boot_id},{seq},{kind},{ts}\n")
        self.count += 1

    def flush(self) -> None:
        if self._lines and self._handle is not None:
            self._handle.write("".join(self._lines))
            self._handle.flush()
            self._lines.clear()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            self.flush()


def read_ledger(path: Path) -> list[tuple[str, str, int, str, int]]:
    """Every ledger line as (vin, boot_id, seq, kind, ts)."""
    rows = []
    for line in path.read_text(encoding="ascii").splitlines():
        vin, boot_id, seq, kind, ts = line.split(",")
        rows.append((vin, boot_id, int(seq), kind, int(ts)))
    return rows
