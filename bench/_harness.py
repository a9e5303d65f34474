"""What every fleet-driven benchmark (chaos, storm, soak) shares: its duration, its work
directory, its table and its JSON last line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from bench._phases import say

__all__ = ["bench_seconds", "finish", "stop_on_sigterm", "storage_flag", "table", "work_dir"]


def bench_seconds(default: float, minimum: float = 5.0) -> float:
    """BENCH_SECONDS, or `default`; refuses nonsense with a message a person can act on."""
    raw = os.environ.get("BENCH_SECONDS", "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise SystemExit(f"BENCH_SECONDS={raw!r} is not a number of seconds") from None
    if seconds < minimum:
        raise SystemExit(f"BENCH_SECONDS must be at least {minimum:g}")
    return seconds


def stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: the services and processes it started are stopped."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def storage_flag(storage: str) -> bool | None:
    """--storage auto|timescaledb|postgres as FleetServices(timescaledb=...) takes it."""
    return {"auto": None, "timescaledb": True, "postgres": False}[storage]


@contextmanager
def work_dir(requested: Path | None, keep: bool, prefix: str) -> Iterator[Path]:
    """`requested` (kept), or a temporary directory removed at the end unless `keep`."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            say(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    shown = [[f"{c:,}" if isinstance(c, int) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in shown)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(headers), rule, *(line(r) for r in shown)])


def finish(results: dict[str, Any]) -> None:
    """The JSON summary: ONE line, the last one of the output."""
    say(json.dumps(results, sort_keys=True))
