"""A fleet split over several worker processes (`tgw sim fleet --processes N`).

One process holds at most as many connections as it may open files (20,000 here, with the
broker needing as many), and one event loop uses one core. Worker k runs cars k, k+N, ...
(`Fleet(part=(k, N))`) with its own queue file and ledger part; the parent forwards the stop
signal, sums the workers' progress and summaries, and merges the ledger parts into the one
ledger file when they are done. Same seed, same cars, whatever N is.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import signal
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from device_sim.errors import DeviceError
from device_sim.fleet import Fleet, FleetFaults, FleetProgress, FleetSummary, ledger_part
from device_sim.logconfig import configure_logging
from device_sim.settings import SimSettings

__all__ = ["run_fleet_processes"]

_POLL_S = 0.2


def run_fleet_processes(
    settings: SimSettings,
    credentials: Mapping[str, str],
    *,
    processes: int,
    faults: FleetFaults,
    duration_s: float | None,
    on_progress: Callable[[FleetProgress], None] | None,
    progress_interval_s: float,
    log_level: str,
) -> FleetSummary:
    """Run the fleet in `processes` workers until `duration_s` or SIGINT/SIGTERM; sum up.

    Raises:
        DeviceError: a worker failed (its message is passed on).
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    progress_queue: Any = context.Queue()
    results: Any = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(
                _Job(
                    settings=settings,
                    credentials=dict(credentials),
                    faults=faults,
                    part=(part, processes),
                    duration_s=duration_s,
                    progress_interval_s=progress_interval_s,
                    log_level=log_level,
                ),
                stop,
                progress_queue,
                results,
            ),
            name=f"tgw-fleet-{part}",
        )
        for part in range(processes)
    ]
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for worker in workers:
            worker.start()
        summaries = _collect(workers, results, progress_queue, on_progress, processes)
    finally:
        stop.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    summary = _merge(summaries)
    if settings.fleet.ledger_file is not None:
        _merge_ledgers(settings, processes)
    return summary


def _collect(
    workers: list[Any],
    results: Any,
    progress_queue: Any,
    on_progress: Callable[[FleetProgress], None] | None,
    processes: int,
) -> list[dict[str, Any]]:
    summaries: list[dict[str, Any]] = []
    latest: dict[int, FleetProgress] = {}
    while len(summaries) < processes:
        with contextlib.suppress(queue.Empty):
            while True:
                part, progress = progress_queue.get_nowait()
                latest[part] = progress
                if len(latest) == processes and on_progress is not None:
                    on_progress(_sum_progress(list(latest.values())))
                    latest.clear()
        try:
            kind, payload = results.get(timeout=_POLL_S)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                name, code = dead[0].name, dead[0].exitcode
                raise DeviceError(f"fleet worker {name} died (exit {code})") from None
            continue
        if kind == "error":
            raise DeviceError(f"a fleet worker failed: {payload}")
        summaries.append(payload)
    return summaries


def _sum_progress(parts: list[FleetProgress]) -> FleetProgress:
    return FleetProgress(
        elapsed_s=max(p.elapsed_s for p in parts),
        cars=sum(p.cars for p in parts),
        connected=sum(p.connected for p in parts),
        messages=sum(p.messages for p in parts),
        msgs_per_s=round(sum(p.msgs_per_s for p in parts), 1),
        queued=sum(p.queued for p in parts),
        cpu_pct=round(sum(p.cpu_pct for p in parts), 1),
    )


_MAXED = {"elapsed_s"}
_NOT_SUMMED = {"extra", "connect_s", *_MAXED}


def _merge(summaries: list[dict[str, Any]]) -> FleetSummary:
    totals: dict[str, Any] = {}
    for field in fields(FleetSummary):
        values = [summary[field.name] for summary in summaries]
        if field.name in _MAXED:
            totals[field.name] = max(values)
        elif field.name == "connect_s":
            totals[field.name] = None if None in values else max(values)
        elif field.name == "extra":
            totals[field.name] = {
                "processes": len(summaries),
                "gc_cpu_s": round(sum(s["extra"].get("gc_cpu_s", 0.0) for s in summaries), 2),
            }
        else:
            totals[field.name] = (
                round(sum(values), 1) if isinstance(values[0], float) else sum(values)
            )
    return FleetSummary(**totals)


def _merge_ledgers(settings: SimSettings, processes: int) -> None:
    target = settings.fleet.ledger_file
    assert target is not None
    with target.open("a", encoding="ascii") as merged:
        for part in range(processes):
            path = ledger_part(target, part, processes)
            if path.exists():
                merged.write(path.read_text(encoding="ascii"))
                path.unlink()


@dataclass(frozen=True, slots=True)
class _Job:
    """What a worker runs (pickled into the spawned process)."""

    settings: SimSettings
    credentials: dict[str, str]
    faults: FleetFaults
    part: tuple[int, int]
    duration_s: float | None
    progress_interval_s: float
    log_level: str


def _worker(job: _Job, stop: ProcessEvent, progress_queue: Any, results: Any) -> None:
    # The parent owns Ctrl-C and SIGTERM; workers stop when it sets `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(job.log_level, json=job.settings.log.json_output)
    try:
        summary = asyncio.run(_run_part(job, stop, progress_queue))
    except DeviceError as exc:
        results.put(("error", str(exc)))
        return
    results.put(("summary", asdict(summary)))


async def _run_part(job: _Job, stop: ProcessEvent, progress_queue: Any) -> FleetSummary:
    part = job.part
    fleet = Fleet(
        job.settings,
        job.credentials,
        faults=job.faults,
        on_progress=lambda progress: progress_queue.put((part[0], progress)),
        progress_interval_s=job.progress_interval_s,
        part=part,
    )

    async def watch_stop() -> None:
        # A multiprocessing Event cannot be awaited; a few polls a second cost nothing.
        while not stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)
        fleet.stop()

    watcher = asyncio.create_task(watch_stop(), name="fleet-stop-watch")
    try:
        return await fleet.run(job.duration_s)
    finally:
        watcher.cancel()
