"""`--profile`: sample the gateway workers with py-spy and say where their time goes.

py-spy (a dev dependency) samples each worker's Python stacks 100 times a second without
touching the process. Each sample is put in the first category below that any of its frames
matches, so a psycopg call made by the writer counts as "database write", and a paho call made
by `ack` counts as "acknowledge". Idle time (waiting in select/epoll) is not sampled.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["CATEGORIES", "PySpy", "summarise"]

# (category, substrings of a frame "function (file:line)"; any match puts the sample there).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("acknowledge after commit (PUBACKs)", ("ack (gateway/ingest/mqtt_source.py",)),
    ("MQTT receive and parse", ("gateway/ingest/mqtt_", "paho/mqtt/")),
    ("database write (writer, psycopg)", ("gateway/ingest/writer.py", "psycopg")),
    ("rows (IngestBatch)", ("gateway/ingest/batch.py",)),
    ("validate (decode_uplink)", ("decode_uplink",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("logging (structlog)", ("structlog",)),
    ("asyncio event loop", ("asyncio/",)),
)
_SITE = re.compile(r"\(/[^()]*?/(site-packages|lib/python3\.\d+)/")
_PROJECT = re.compile(r"\(/[^()]*?/(gateway|schemas)/")


def _frame(frame: str) -> str:
    return _PROJECT.sub(r"(\1/", _SITE.sub("(", frame))


def summarise(raw_files: list[Path], top: int = 12) -> dict[str, object]:
    """Category shares (% of samples) and the functions with the most self time."""
    by_category: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue  # an incomplete last line
            count = int(count_text)
            frames = [_frame(frame) for frame in stack.split(";")]
            total += count
            by_function[frames[-1]] += count
            by_category[_category(frames)] += count
    if not total:
        return {"samples": 0}

    def share(count: int) -> float:
        return round(100 * count / total, 1)

    return {
        "samples": total,
        "categories_pct": {name: share(count) for name, count in by_category.most_common()},
        "top_self_pct": {name: share(count) for name, count in by_function.most_common(top)},
    }


def _category(frames: list[str]) -> str:
    for name, needles in CATEGORIES:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return "other"


class PySpy:
    """`py-spy record` of each process for `duration_s`, raw (collapsed) stacks into `out_dir`."""

    def __init__(self, out_dir: Path, pids: list[int], duration_s: float) -> None:
        beside = Path(sys.executable).with_name("py-spy")
        binary = str(beside) if beside.exists() else shutil.which("py-spy")
        if binary is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
        out_dir.mkdir(parents=True, exist_ok=True)
        self._binary = binary
        self._files = [out_dir / f"gateway-{pid}.txt" for pid in pids]
        self._pids = pids
        self._duration_s = duration_s
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for pid, path in zip(self._pids, self._files, strict=True):
            command = [
                self._binary, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                "--duration", str(int(self._duration_s)), "--output", str(path), "--nonblocking",
            ]  # fmt: skip
            self._processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def finish(self) -> dict[str, object]:
        """Stop sampling (SIGINT makes py-spy write its file) and summarise."""
        for process in self._processes:
            process.send_signal(2)
        for process in self._processes:
            process.wait(30)
        summary = summarise([path for path in self._files if path.exists()])
        summary["files"] = [str(path) for path in self._files]
        return summary
