"""The simulated fleet as a process: `tgw sim fleet`, its progress, its ledger, its summary.

The fleet runs until it is told to stop (SIGTERM: every car disconnects in order), so a
benchmark decides when a phase ends. Progress lines (stderr, every `progress_every_s`) are
parsed as they come; the JSON summary is the last stdout line. With `ledger`, every
(VIN, boot id, seq) the broker acknowledged is in that file once the process has exited.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

__all__ = ["FleetOptions", "FleetProcess", "FleetProgressLine"]

_PROGRESS = re.compile(
    r"\[\s*(?P<elapsed>[\d.]+) s\] connected (?P<connected>\d+)/(?P<cars>\d+)\s+"
    r"messages (?P<messages>\d+) \((?P<rate>[\d.]+)/s\)\s+queued (?P<queued>\d+)\s+"
    r"cpu (?P<cpu>[\d.]+)%"
)


@dataclass(frozen=True, slots=True)
class FleetProgressLine:
    elapsed_s: float
    connected: int
    cars: int
    messages: int
    msgs_per_s: float
    queued: int
    cpu_pct: float
    seen_at: float  # time.monotonic() when read
    seen_wall: float  # time.time() when read

    @property
    def clock_origin(self) -> float:
        """The wall-clock time the fleet's own clock (its --dead-zone-after) counts from."""
        return self.seen_wall - self.elapsed_s


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """What `tgw sim fleet` is asked to do (its options; faults are off unless set)."""

    cars: int
    seed: int
    credentials: Path
    queue_dir: Path
    ledger: Path | None = None
    processes: int = 1
    driving_interval_s: float = 1.0
    parked_interval_s: float = 60.0
    driving_share: float | None = None
    connect_rate: float | None = None
    # A whole number; typed float like the fault options, which callers pass as **floats.
    connect_concurrency: float | None = None
    progress_every_s: float = 1.0
    dead_zone_share: float = 0.0
    dead_zone_after_s: float = 0.0
    dead_zone_s: float = 0.0
    duplicate_share: float = 0.0

    def arguments(self, host: str, port: int) -> list[str]:
        args = [
            "--cars", str(self.cars), "--seed", str(self.seed),
            "--host", host, "--port", str(port),
            "--credentials", str(self.credentials), "--queue-dir", str(self.queue_dir),
            "--processes", str(self.processes),
            "--driving-interval", str(self.driving_interval_s),
            "--parked-interval", str(self.parked_interval_s),
            "--progress-every", str(self.progress_every_s),
            "--log-level", "WARNING",
        ]  # fmt: skip
        if self.ledger is not None:
            args += ["--ledger", str(self.ledger)]
        if self.driving_share is not None:
            args += ["--driving-share", str(self.driving_share)]
        if self.connect_rate is not None:
            args += ["--connect-rate", str(self.connect_rate)]
        if self.connect_concurrency is not None:
            args += ["--connect-concurrency", str(int(self.connect_concurrency))]
        if self.dead_zone_share:
            args += [
                "--dead-zone-share", str(self.dead_zone_share),
                "--dead-zone-after", str(self.dead_zone_after_s),
                "--dead-zone-seconds", str(self.dead_zone_s),
            ]  # fmt: skip
        if self.duplicate_share:
            args += ["--duplicate-share", str(self.duplicate_share)]
        return args


class FleetProcess:
    """`tgw sim fleet` against `broker`, output in `log_file`."""

    def __init__(self, options: FleetOptions, broker: tuple[str, int], log_file: Path) -> None:
        self.options = options
        self._broker = broker
        self.log_file = log_file
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._progress: FleetProgressLine | None = None
        self._last_stdout = ""
        self._readers: list[threading.Thread] = []
        self._log: IO[str] | None = None
        self.started_at = 0.0

    @property
    def progress(self) -> FleetProgressLine | None:
        with self._lock:
            return self._progress

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def processes(self) -> list[psutil.Process]:
        """The fleet's parent and its worker processes."""
        if self._process is None or self._process.poll() is not None:
            return []
        try:
            parent = psutil.Process(self._process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def start(self) -> None:
        tgw = Path(sys.executable).with_name("tgw")
        command = [str(tgw), "sim", "fleet", *self.options.arguments(*self._broker)]
        self._process = subprocess.Popen(  # our own entry point
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a Ctrl-C reaches the bench, which stops us in order
        )
        self.started_at = time.monotonic()
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        log = self._log = self.log_file.open("a", encoding="utf-8", buffering=1)
        self._readers = [
            threading.Thread(target=self._read_stderr, args=(self._process.stderr, log)),
            threading.Thread(target=self._read_stdout, args=(self._process.stdout, log)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read_stderr(self, stream: IO[str], log: IO[str]) -> None:
        for line in stream:
            log.write(line)
            match = _PROGRESS.search(line)
            if match is None:
                continue
            values = match.groupdict()
            progress = FleetProgressLine(
                elapsed_s=float(values["elapsed"]),
                connected=int(values["connected"]),
                cars=int(values["cars"]),
                messages=int(values["messages"]),
                msgs_per_s=float(values["rate"]),
                queued=int(values["queued"]),
                cpu_pct=float(values["cpu"]),
                seen_at=time.monotonic(),
                seen_wall=time.time(),
            )
            with self._lock:
                self._progress = progress

    def _read_stdout(self, stream: IO[str], log: IO[str]) -> None:
        for line in stream:
            log.write(line)
            if line.strip():
                self._last_stdout = line.strip()

    def check(self) -> None:
        if self._process is not None and self._process.poll() not in (None, 0):
            raise RuntimeError(
                f"the fleet exited ({self._process.returncode}); see {self.log_file}"
            )

    def wait_connected(self, share: float = 1.0, timeout_s: float = 300.0) -> float:
        """Wait until `share` of the cars are connected; return how long since the start."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            progress = self.progress
            if progress is not None and progress.connected >= share * self.options.cars:
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                shown = progress.connected if progress else 0
                raise RuntimeError(
                    f"only {shown} of {self.options.cars} cars connected within {timeout_s:.0f} s"
                    f"; see {self.log_file}"
                )
            time.sleep(0.2)

    def wait_queues_empty(self, timeout_s: float, slack: int = 0) -> bool:
        """Wait until a progress line reports at most `slack` rows queued in the cars."""
        deadline = time.monotonic() + timeout_s
        since = time.monotonic()
        while time.monotonic() < deadline:
            self.check()
            progress = self.progress
            if progress is not None and progress.seen_at > since and progress.queued <= slack:
                return True
            time.sleep(0.2)
        return False

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """SIGTERM, wait for the summary (the fleet's last stdout line, JSON)."""
        process = self._process
        if process is None:
            return {}
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for reader in self._readers:
            reader.join(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        try:
            summary: dict[str, Any] = json.loads(self._last_stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"the fleet left no summary (exit {process.returncode}); see {self.log_file}"
            ) from None
        return summary
