"""Lock and unlock commands sent through the HTTP API during faults, followed to a final state.

A request the API accepted (202) is a command in flight: it must reach exactly one final state
(executed, verified, rejected, failed, expired, timed_out) whatever happens meanwhile. A
request the API could not take (the gateway is down, the database is down: no answer, 503) is
counted as refused: nothing was queued, so there is nothing to resolve. The database is asked
too (`unresolved_in_database`), which also catches a command created by a gateway killed
before it could answer.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx
import psycopg

__all__ = ["FINAL_STATES", "CommandProbe", "CommandTally", "unresolved_in_database"]

FINAL_STATES = frozenset({"executed", "verified", "rejected", "failed", "expired", "timed_out"})


@dataclass
class CommandTally:
    """What became of the commands of one phase."""

    requested: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # why the API took none
    final: Counter[str] = field(default_factory=Counter)  # final state -> commands
    unresolved: int = 0

    @property
    def resolved(self) -> int:
        return sum(self.final.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "accepted": self.accepted,
            "resolved": self.resolved,
            "unresolved": self.unresolved,
            "final": dict(self.final),
            "refused": dict(self.refused),
        }


class CommandProbe:
    """Sends commands to whichever gateway instance answers; follows them to a final state.

    Args:
        token: an operator token.
        base_urls: the API base URLs of the gateway instances running now (asked each time).
        ttl_s: each command's time to live.
    """

    def __init__(self, token: str, base_urls: Callable[[], list[str]], ttl_s: int) -> None:
        self._base_urls = base_urls
        self._ttl_s = ttl_s
        # Longer than the gateway's wait for a database connection (5 s, then 503): an outage
        # shows as the gateway's answer, not as the client giving up first.
        self._http = httpx.Client(timeout=10.0, headers={"Authorization": f"Bearer {token}"})
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # command id -> base url that took it
        # Requests go out in the background: a gateway that hangs must not hold up the faults.
        self._senders = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-command")
        self._sending: list[Future[str | None]] = []
        self.tally = CommandTally()

    def close(self) -> None:
        self._senders.shutdown(wait=True)
        self._http.close()

    def send(self, vin: str, action: str) -> None:
        """Ask for `action` on `vin`, in the background (see `resolve`)."""
        self._sending.append(self._senders.submit(self._send, vin, action))

    def _send(self, vin: str, action: str) -> str | None:
        with self._lock:
            self.tally.requested += 1
            urls = self._base_urls()
            base = urls[next(self._turn) % len(urls)] if urls else None
        if base is None:
            self._refused("no gateway running")
            return None
        body = {"action": action, "ttl_s": self._ttl_s, "idempotency_key": uuid.uuid4().hex}
        try:
            response = self._http.post(f"{base}/v1/vehicles/{vin}/commands", json=body)
        except httpx.HTTPError as exc:
            self._refused(f"no answer ({type(exc).__name__})")
            return None
        if response.status_code != 202:
            self._refused(f"HTTP {response.status_code}")
            return None
        command_id = str(response.json()["command_id"])
        with self._lock:
            self.tally.accepted += 1
            self._pending[command_id] = base
        return command_id

    def _refused(self, why: str) -> None:
        with self._lock:
            self.tally.refused[why] += 1

    def resolve(self, timeout_s: float) -> CommandTally:
        """Wait for the requests sent, then poll every command in flight until it is final or
        `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        wait(self._sending)
        self._sending.clear()
        while self._pending and time.monotonic() < deadline:
            for command_id in list(self._pending):
                status = self._status(command_id)
                if status in FINAL_STATES:
                    del self._pending[command_id]
                    self.tally.final[status] += 1
            if self._pending:
                time.sleep(0.5)
        self.tally.unresolved = len(self._pending)
        return self.tally

    def _status(self, command_id: str) -> str | None:
        for base in [self._pending[command_id], *self._base_urls()]:
            try:
                response = self._http.get(f"{base}/v1/commands/{command_id}")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return str(response.json()["status"])
        return None

    def start_phase(self) -> None:
        """Count the next phase's commands afresh (those still pending stay pending)."""
        self.tally = CommandTally()


def unresolved_in_database(dsn: str) -> dict[str, int]:
    """Commands not in a final state, by state, over the whole database."""
    query = "SELECT status::text, count(*) FROM commands GROUP BY 1"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query).fetchall()
    return {str(status): int(n) for status, n in rows if status not in FINAL_STATES}
