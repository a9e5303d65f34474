"""What the gateway's database sessions are doing, sampled from `pg_stat_activity`.

Ten times a second, each client session of the benchmark database (except this one) is put in
one bucket: `idle` (no transaction: the gateway is between batches), `idle in transaction`
(the database waits for the gateway, e.g. for the next COPY data), `running` (the server
works on a statement), or `waiting: <type>/<event>` (the server waits, e.g. for a row lock or
a WAL flush). Shares are of all samples, so they say where a batch's time goes.
"""

from __future__ import annotations

import collections
import threading

import psycopg

__all__ = ["SessionSampler"]

_QUERY = """
    SELECT state, wait_event_type, wait_event FROM pg_stat_activity
    WHERE datname = current_database() AND backend_type = 'client backend'
      AND pid <> pg_backend_pid() AND application_name NOT LIKE 'bench%%'
"""
_PERIOD_S = 0.1


class SessionSampler:
    """Samples in a thread between `start()` and `stop()`; `shares()` reports."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-waits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(10)
        return self.shares()

    def shares(self) -> dict[str, float]:
        total = sum(self._counts.values())
        if not total:
            return {}
        return {name: round(100 * n / total, 1) for name, n in self._counts.most_common(8)}

    def _run(self) -> None:
        try:
            with psycopg.connect(
                self._dsn, autocommit=True, application_name="bench-waits"
            ) as conn:
                while not self._stop.wait(_PERIOD_S):
                    for state, wait_type, wait_event in conn.execute(_QUERY).fetchall():
                        self._counts[_bucket(state, wait_type, wait_event)] += 1
        except psycopg.OperationalError:
            return  # the database went away (the outage phase): nothing more to sample


def _bucket(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    if state == "active":
        if wait_type is None or wait_type == "CPU":
            return "running"
        return f"waiting: {wait_type}/{wait_event}"
    if state == "idle" and wait_type == "Client":
        return "idle"
    return str(state)
