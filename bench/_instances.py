"""Gateway instances as separate processes, each with its own identity, for faults and scale-out.

`bench._gateway.GatewayProcess` runs `tgw gateway run --workers N` as one unit (its supervisor
stops every worker when one dies). Here each instance is a `tgw gateway run` process of its
own, as on separate machines: its own broker account (the broker pins client id = username),
its own HTTP port, all on one broker through the shared subscription and one database. So one
can be killed with SIGKILL and started again with the same identity (it resumes its session at
the broker and gets what it had not acknowledged), while the others keep running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import httpx
import psutil

from gateway.devstack import BrokerAccount, free_port

__all__ = ["GatewayInstance", "InstanceCounters", "metric_sum", "running", "scrape"]

_STARTUP_TIMEOUT_S = 60.0


def scrape(client: httpx.Client, port: int) -> dict[str, float]:
    """Every sample of an instance's /metrics, by its full series name (labels included)."""
    text = client.get(f"http://127.0.0.1:{port}/metrics").text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], prefix: str) -> float:
    """The sum of the series whose name starts with `prefix` (e.g. every label value)."""
    return sum(value for name, value in samples.items() if name.startswith(prefix))


class GatewayInstance:
    """One `tgw gateway run` process with identity `account`, logging to `log_file`.

    Args:
        index: 1-based instance number (names only).
        account: its own broker account (username = client id).
        broker: (host, port) of the broker.
        dsn: the database.
        log_file: its output (appended across restarts).
        extra_env: more TGW_* settings (signing key, batch sizes, ...).
    """

    def __init__(
        self,
        index: int,
        account: BrokerAccount,
        *,
        broker: tuple[str, int],
        dsn: str,
        log_file: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.index = index
        self.account = account
        self.http_port = free_port()
        self.log_file = log_file
        self._env = {
            **os.environ,
            "TGW_MQTT__HOST": broker[0],
            "TGW_MQTT__PORT": str(broker[1]),
            "TGW_MQTT__USERNAME": account.username,
            "TGW_MQTT__CLIENT_ID": account.username,
            "TGW_MQTT__PASSWORD": account.password,
            "TGW_DATABASE__DSN": dsn,
            "TGW_HTTP__PORT": str(self.http_port),
            "TGW_LOG__LEVEL": "INFO",
            "TGW_LOG__JSON_OUTPUT": "true",
            **(extra_env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)
        self.starts = 0

    @property
    def name(self) -> str:
        return f"gateway-{self.index}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *, wait: bool = True) -> None:
        """Start it (again, after a kill or stop); with `wait`, until /health answers 200."""
        if self.running:
            return
        tgw = Path(sys.executable).with_name("tgw")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(  # our own entry point
                [str(tgw), "gateway", "run"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops us in order
            )
        self.starts += 1
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout_s: float = _STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if not self.running:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_file}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become healthy; see {self.log_file}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            return self._http.get(f"{self.base_url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> dict[str, float]:
        """Its /metrics now; empty while it does not answer."""
        if not self.running:
            return {}
        try:
            return scrape(self._http, self.http_port)
        except httpx.HTTPError:
            return {}

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (a crash, or a machine gone)."""
        process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (commit and acknowledge what it has), then wait; SIGKILL after `timeout_s`."""
        process = self._process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()

    def close(self) -> None:
        self.stop()
        self._http.close()

    def rss_mb(self) -> float:
        pid = self.pid
        if pid is None:
            return 0.0
        try:
            return psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0


def running(instances: Iterable[GatewayInstance]) -> list[GatewayInstance]:
    return [instance for instance in instances if instance.running]


class InstanceCounters:
    """Per-instance totals of a few counters over restarts (a restarted process counts from 0).

    Call `poll` often (a kill loses what was counted since the last poll from these totals;
    they are for showing how the work splits, the database is what counts)."""

    SERIES: ClassVar[dict[str, str]] = {
        "received": "tgw_ingest_messages_received_total",
        "stored": 'tgw_ingest_rows_stored_total{table="telemetry"}',
        "dispatched": 'tgw_commands_dispatch_total{outcome="sent"}',
    }

    def __init__(self, instances: list[GatewayInstance]) -> None:
        self._instances = instances
        self.totals: dict[str, dict[str, float]] = {
            instance.name: dict.fromkeys(self.SERIES, 0.0) for instance in instances
        }
        self._last: dict[tuple[str, str], tuple[int, float]] = {}

    def poll(self) -> None:
        for instance in self._instances:
            samples = instance.metrics()
            if not samples:
                continue
            for key, prefix in self.SERIES.items():
                value = metric_sum(samples, prefix)
                starts, last = self._last.get((instance.name, key), (instance.starts, 0.0))
                if starts != instance.starts or value < last:
                    last = 0.0  # a new process since the last poll
                self.totals[instance.name][key] += value - last
                self._last[(instance.name, key)] = (instance.starts, value)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            name: {key: round(value) for key, value in counts.items()}
            for name, counts in self.totals.items()
        }
