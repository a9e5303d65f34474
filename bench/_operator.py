"""The operator side of the commands benchmark: send commands through the API, see them end.

`Operator` posts commands (`POST /v1/vehicles/{vin}/commands`) round-robin over the gateway's
worker ports and follows every command's transitions on ONE live stream
(`GET /v1/commands/events`, server-sent events), as a console or a booking backend would. A
command's latency is the time from just before its request is written to the moment its
final state (`executed`, `rejected`, `failed`, `expired`, `timed_out`) arrives on the stream;
`verified` is noted when it arrives later. Both on this process's monotonic clock.

Two ways to drive it: `sequential` (one command at a time: latency without queueing in the
benchmark itself) and `closed_loop` (`window` commands outstanding at once, each to a car that
has none: the sustained rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench._http import HttpClient, HttpError, sse_events

__all__ = ["FINAL", "CommandSample", "Operator"]

FINAL = frozenset({"executed", "rejected", "failed", "expired", "timed_out"})
_COMMAND_TIMEOUT_S = 60.0  # beyond the default TTL (30 s) + expiry grace (5 s) + sweep


@dataclass(slots=True)
class CommandSample:
    """One command as the operator saw it (monotonic seconds; wall clock for `posted_wall`)."""

    vin: str
    action: str
    phase: str
    measured: bool
    posted: float
    posted_wall: float
    answered: float | None = None
    http_status: int | None = None
    command_id: str | None = None
    final: float | None = None
    status: str | None = None
    reason: str | None = None
    verified: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def latency_ms(self) -> float | None:
        return None if self.final is None else 1000 * (self.final - self.posted)

    @property
    def verified_ms(self) -> float | None:
        return None if self.verified is None else 1000 * (self.verified - self.posted)

    @property
    def api_ms(self) -> float | None:
        return None if self.answered is None else 1000 * (self.answered - self.posted)


class Operator:
    """Sends commands and follows them; use as `async with Operator(...) as operator`."""

    def __init__(self, host: str, ports: Sequence[int], token: str, connections: int) -> None:
        self._host = host
        self._token = token
        per_port = max(2, -(-connections // len(ports)))
        self._clients = [HttpClient(host, port, token, per_port) for port in ports]
        self._turn = itertools.cycle(self._clients)
        self._stream_port = ports[0]
        self._by_id: dict[str, CommandSample] = {}
        # Events that overtook the POST's answer (the car can be that fast): applied on arrival.
        self._early: dict[str, list[tuple[float, str, str | None]]] = {}
        self._stream: asyncio.Task[None] | None = None
        self.locked: dict[str, bool] = {}  # the lock state each car was last commanded into
        self.samples: list[CommandSample] = []
        self.events = 0

    async def __aenter__(self) -> Operator:
        connected = asyncio.Event()
        self._stream = asyncio.create_task(self._follow(connected), name="operator-stream")
        waiter = asyncio.create_task(connected.wait())
        done, _ = await asyncio.wait(
            {self._stream, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if self._stream in done:
            self._stream.result()  # raises what went wrong
        if not connected.is_set():
            raise HttpError("the command event stream did not open within 30 s")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, HttpError, OSError):
                await self._stream
        for client in self._clients:
            await client.aclose()

    # --- the live stream ----------------------------------------------------------------------

    async def _follow(self, connected: asyncio.Event) -> None:
        stream = sse_events(
            self._host, self._stream_port, "/v1/commands/events", self._token, connected=connected
        )
        async for name, data in stream:
            if name != "transition":
                continue
            now = time.perf_counter()
            self.events += 1
            event = json.loads(data)
            command_id, status = event["command_id"], event["status"]
            sample = self._by_id.get(command_id)
            if sample is None:
                self._early.setdefault(command_id, []).append((now, status, event.get("reason")))
            else:
                self._apply(sample, now, status, event.get("reason"))
        raise HttpError("the command event stream ended")

    @staticmethod
    def _apply(sample: CommandSample, now: float, status: str, reason: str | None) -> None:
        if status in FINAL and sample.final is None:
            sample.final, sample.status, sample.reason = now, status, reason
            sample.done.set()
        elif status == "verified" and sample.verified is None:
            sample.verified = now

    # --- sending ------------------------------------------------------------------------------

    def next_action(self, vin: str) -> str:
        """Unlock a locked car, lock an unlocked one: every command moves the actuator."""
        return "unlock" if self.locked.get(vin, True) else "lock"

    async def send(self, vin: str, phase: str, *, measured: bool) -> CommandSample:
        """Post one command for `vin` and wait for its final state (or give up)."""
        action = self.next_action(vin)
        body = json.dumps({"action": action}).encode()
        client = next(self._turn)
        sample = CommandSample(vin, action, phase, measured, time.perf_counter(), time.time())
        self.samples.append(sample)
        try:
            response = await client.request("POST", f"/v1/vehicles/{vin}/commands", body)
        except HttpError as exc:
            sample.status, sample.reason = "http_error", str(exc)[:200]
            return sample
        sample.answered = time.perf_counter()
        sample.http_status = response.status
        if response.status != 202:
            sample.status, sample.reason = f"http_{response.status}", response.body[:200].decode()
            return sample
        command_id = response.json()["command_id"]
        sample.command_id = command_id
        self._by_id[command_id] = sample
        for at, status, reason in self._early.pop(command_id, []):
            self._apply(sample, at, status, reason)
        try:
            await asyncio.wait_for(sample.done.wait(), _COMMAND_TIMEOUT_S)
        except TimeoutError:
            sample.status = "no_final_state_seen"
            return sample
        if sample.status == "executed":
            self.locked[vin] = action == "lock"
        return sample

    async def sequential(
        self,
        phase: str,
        vins: Sequence[str],
        *,
        warmup_s: float,
        measure_s: float,
        progress: Callable[[str], None],
    ) -> tuple[float, float]:
        """One command at a time, cycling over `vins`; return the measured (start, end)."""
        started = time.perf_counter()
        measure_from, end = started + warmup_s, started + warmup_s + measure_s
        next_progress = started + 2.0
        for vin in itertools.cycle(vins):
            now = time.perf_counter()
            if now >= end:
                break
            await self.send(vin, phase, measured=now >= measure_from)
            if now >= next_progress:
                progress(self._progress_line(phase, started, measure_from))
                next_progress = now + 2.0
        return measure_from, end

    async def closed_loop(
        self,
        phase: str,
        vins: Sequence[str],
        *,
        window: int,
        warmup_s: float,
        measure_s: float,
        progress: Callable[[str], None],
    ) -> tuple[float, float]:
        """`window` commands outstanding, each to a car with none; return (start, end)."""
        free = deque(vins)
        started = time.perf_counter()
        measure_from, end = started + warmup_s, started + warmup_s + measure_s

        async def worker() -> None:
            while (now := time.perf_counter()) < end:
                vin = free.popleft()
                try:
                    await self.send(vin, phase, measured=now >= measure_from)
                finally:
                    free.append(vin)

        async def report() -> None:
            while True:
                await asyncio.sleep(2.0)
                progress(self._progress_line(phase, started, measure_from))

        reporter = asyncio.create_task(report())
        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(min(window, len(vins))):
                    tasks.create_task(worker())
        finally:
            reporter.cancel()
        return measure_from, end

    def _progress_line(self, phase: str, started: float, measure_from: float) -> str:
        now = time.perf_counter()
        recent = [s for s in self.samples if s.phase == phase and s.final and s.final > now - 2.0]
        latencies = sorted(s.latency_ms for s in recent if s.latency_ms is not None)
        p50 = latencies[len(latencies) // 2] if latencies else float("nan")
        p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
        return (
            f"  {phase:<10} {now - started:5.0f} s  {len(recent) / 2.0:7.1f} commands/s"
            f"  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            + ("  (warm-up)" if now < measure_from else "")
        )
