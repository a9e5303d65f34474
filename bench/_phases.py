"""The mechanics of a benchmark phase: the load generator steered as one, CPU and memory meters,
and `drive`, which runs a phase open- or closed-loop while printing progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench._gateway import ProcessGroupSampler
from bench._load import LoadControl, PublisherProcess
from bench._stack import BenchStack

__all__ = ["Load", "Meters", "Window", "drain", "drive", "postgres_pids", "say", "tree"]

_CONTROL_PERIOD_S = 0.25
_PROGRESS_PERIOD_S = 2.0


def say(text: str) -> None:
    """Progress for the person running the benchmark (stdout, unbuffered)."""
    print(text, flush=True)


# --- load -------------------------------------------------------------------------------------


class Load:
    """The publisher processes, steered together."""

    def __init__(self, stack: BenchStack, processes: int) -> None:
        accounts = stack.car_accounts
        self.controls = [LoadControl.create() for _ in range(processes)]
        self.publishers = [
            PublisherProcess(accounts[i::processes], control)
            for i, control in enumerate(self.controls)
        ]
        self.cars = len(accounts)

    def start(self, timeout_s: float = 120.0) -> None:
        for publisher in self.publishers:
            publisher.start()
        deadline = time.monotonic() + timeout_s
        while sum(c.connected.value for c in self.controls) < self.cars:
            if not all(p.alive for p in self.publishers):
                raise RuntimeError("a publisher process died while connecting its cars")
            if time.monotonic() > deadline:
                raise RuntimeError("the cars did not all connect in time")
            time.sleep(0.1)

    def stop(self) -> None:
        for publisher in self.publishers:
            publisher.stop()

    def pids(self) -> list[int]:
        return [p.pid for p in self.publishers if p.pid is not None]

    def check(self) -> None:
        if not all(p.alive for p in self.publishers):
            raise RuntimeError("a publisher process died (a car's connection was dropped?)")

    @property
    def published(self) -> int:
        return sum(c.published.value for c in self.controls)

    @property
    def acked(self) -> int:
        return sum(c.acked.value for c in self.controls)

    @property
    def refused(self) -> int:
        return sum(c.refused.value for c in self.controls)

    def set_rate(self, total: float) -> None:
        for control in self.controls:
            control.rate.value = total / len(self.controls)

    def allow(self, total: int) -> None:
        """Let the processes publish up to `total` messages in all (each its share)."""
        share = math.ceil(total / len(self.controls))
        for control in self.controls:
            control.limit.value = share

    def quiesce(self, timeout_s: float = 60.0) -> None:
        """Stop publishing and wait until the broker acknowledged everything published."""
        self.set_rate(0)
        deadline = time.monotonic() + timeout_s
        while self.acked < self.published:
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not acknowledge every publish in time")
            time.sleep(0.05)


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Window:
    """What was consumed and used during the measured part of a phase."""

    start: float = 0.0
    end: float = 0.0
    consumed: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    max_rss_mb: float = 0.0
    max_rss_mb_per_process: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def rate(self) -> float:
        return self.consumed / self.seconds if self.seconds > 0 else 0.0

    def track_rss(self, total_mb: float, largest_mb: float) -> None:
        self.max_rss_mb = max(self.max_rss_mb, total_mb)
        self.max_rss_mb_per_process = max(self.max_rss_mb_per_process, largest_mb)

    def cpu_pct(self, name: str) -> float:
        return 100 * self.cpu_s.get(name, 0.0) / self.seconds if self.seconds > 0 else 0.0


class Meters:
    """CPU and memory of each part of the system, sampled together."""

    def __init__(self) -> None:
        self.groups: dict[str, tuple[Callable[[], list[psutil.Process]], ProcessGroupSampler]] = {}
        self._rss_mb: dict[str, tuple[float, float]] = {}

    def add(self, name: str, processes: Callable[[], list[psutil.Process]]) -> None:
        self.groups[name] = (processes, ProcessGroupSampler())

    def sample(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, (processes, sampler) in self.groups.items():
            try:
                current = processes()
            except psutil.Error:
                current = []
            cpu[name], total, largest = sampler.sample(current)
            self._rss_mb[name] = (total, largest)
        busy = psutil.cpu_times()
        cpu["machine"] = busy.user + busy.system + busy.nice + busy.irq + busy.softirq
        return cpu

    def rss_mb(self, name: str) -> tuple[float, float]:
        """(all processes of `name` together, the largest one) at the last sample."""
        return self._rss_mb.get(name, (0.0, 0.0))


def tree(pids: Callable[[], list[int]]) -> Callable[[], list[psutil.Process]]:
    def processes() -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for pid in pids():
            try:
                parent = psutil.Process(pid)
                found += [parent, *parent.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    return processes


def postgres_pids(stack: BenchStack) -> list[int]:
    try:
        first = (stack.postgres.data_dir / "postmaster.pid").read_text().split()[0]
    except (OSError, IndexError):
        return []
    return [int(first)]


def drive(
    name: str,
    load: Load,
    meters: Meters,
    consumed: Callable[[], int],
    *,
    rate: float,
    warmup_s: float,
    measure_s: float,
    backlog: int | None,
    rss_of: str | None = None,
    during: Callable[[float], None] | None = None,
) -> Window:
    """Run one phase: load at `rate` for warm-up + measurement, then stop publishing.

    With `backlog`, publishing may run ahead of what was consumed by at most that many
    messages (closed loop); without, it follows `rate` alone (open loop).
    """
    window = Window()
    base_published = load.published
    base_consumed = consumed()
    if backlog is None:
        load.allow(10**15)
    else:
        load.allow(base_published + backlog)
    load.set_rate(rate)
    started = time.monotonic()
    measure_from = started + warmup_s
    finish = measure_from + measure_s
    cpu_start: dict[str, float] = {}
    next_progress = started + _PROGRESS_PERIOD_S
    last = (started, load.published, base_consumed)
    measuring = False
    while (now := time.monotonic()) < finish:
        load.check()
        done = consumed()
        if backlog is not None:
            load.allow(base_published + (done - base_consumed) + backlog)
        if during is not None:
            during(now - started)
        if not measuring and now >= measure_from:
            measuring = True
            window.start, window.consumed = time.time(), -done
            cpu_start = meters.sample()
        if measuring and rss_of is not None:
            meters.sample()
            window.track_rss(*meters.rss_mb(rss_of))
        if now >= next_progress:
            published = load.published
            dt = now - last[0]
            behind = (published - base_published) - (done - base_consumed)
            say(
                f"  {name:<10} {now - started:5.0f} s"
                f"  published {(published - last[1]) / dt:8,.0f}/s"
                f"  consumed {(done - last[2]) / dt:8,.0f}/s  behind {behind:8,}"
                + ("  (warm-up)" if not measuring else "")
            )
            last = (now, published, done)
            next_progress = now + _PROGRESS_PERIOD_S
        time.sleep(_CONTROL_PERIOD_S)
    cpu_end = meters.sample()
    window.end = time.time()
    window.consumed += consumed()
    window.cpu_s = {k: cpu_end[k] - cpu_start.get(k, cpu_end[k]) for k in cpu_end}
    # Whatever else ran on the machine meanwhile (another test run skews every figure).
    ours = sum(v for k, v in window.cpu_s.items() if k != "machine")
    window.cpu_s["other"] = max(window.cpu_s["machine"] - ours, 0.0)
    if rss_of is not None:
        window.track_rss(*meters.rss_mb(rss_of))
    return window


def drain(load: Load, consumed: Callable[[], int], expected: int, timeout_s: float) -> float:
    """Wait until `consumed()` reaches `expected`; return how long that took."""
    started = time.monotonic()
    while consumed() < expected:
        load.check()
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(
                f"the consumer stayed behind: {consumed():,} of {expected:,} "
                f"after {timeout_s:.0f} s"
            )
        time.sleep(0.1)
    return time.monotonic() - started
