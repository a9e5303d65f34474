"""The gateway under test: the real `tgw gateway run` as a subprocess, and what it says."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench._stack import GatewayAccounts
from gateway.devstack import port_is_free

__all__ = ["GatewayProcess", "ProcessGroupSampler"]

_STARTUP_TIMEOUT_S = 60.0
# Below Linux's default ephemeral range (32768-60999) and above the well-known services.
_PORTS_FROM, _PORTS_TO = 20_000, 32_000
_STORED_TELEMETRY = 'tgw_ingest_rows_stored_total{table="telemetry"}'
_BATCH_SERIES = (
    "tgw_ingest_batch_messages_count",
    "tgw_ingest_batch_messages_sum",
    "tgw_ingest_commit_seconds_sum",
)


def _free_port_run(count: int) -> int:
    """A first port such that `count` consecutive ports are free (one per worker).

    Taken below the ephemeral range: there the OS's own picks for listening sockets alternate
    with the ports of outgoing connections, so with thousands of those open (cars, other test
    runs) two consecutive free ports are rare.
    """
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(_PORTS_FROM, _PORTS_TO - count)
        if all(port_is_free(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports in {_PORTS_FROM}-{_PORTS_TO}")


class GatewayProcess:
    """`tgw gateway run --workers N` with production defaults, logging to `log_file`."""

    def __init__(
        self,
        accounts: GatewayAccounts,
        broker: tuple[str, int],
        dsn: str,
        log_file: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workers = accounts.workers
        self.http_port = _free_port_run(self.workers)
        self._log_file = log_file
        self._env = {
            **os.environ,
            "TGW_MQTT__HOST": broker[0],
            "TGW_MQTT__PORT": str(broker[1]),
            "TGW_MQTT__USERNAME": accounts.username,
            "TGW_MQTT__CLIENT_ID": accounts.username,
            "TGW_MQTT__PASSWORD": accounts.password,
            "TGW_DATABASE__DSN": dsn,
            "TGW_HTTP__PORT": str(self.http_port),
            "TGW_LOG__LEVEL": "INFO",
            "TGW_LOG__JSON_OUTPUT": "true",
            **(extra_env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None
        # Generous: a worker's event loop can be busy for a while with a large backlog.
        self._http = httpx.Client(timeout=15.0)
        self._stored_last = 0

    @property
    def ports(self) -> list[int]:
        return [self.http_port + i for i in range(self.workers)]

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        """Start the gateway and wait until every worker's health endpoint answers 200."""
        tgw = Path(sys.executable).with_name("tgw")
        with self._log_file.open("ab") as log:
            self._process = subprocess.Popen(  # our own entry point
                [str(tgw), "gateway", "run", "--workers", str(self.workers)],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops us in order
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        for port in self.ports:
            while not self._healthy(port):
                if self._process.poll() is not None:
                    raise RuntimeError(f"the gateway exited at start; see {self._log_file}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not become healthy; see {self._log_file}")
                time.sleep(0.1)

    def _healthy(self, port: int) -> bool:
        try:
            return self._http.get(f"http://127.0.0.1:{port}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def stored_telemetry(self) -> int:
        """Telemetry rows the workers say they committed (their Prometheus counters); the
        last known count while a worker does not answer (only progress depends on it)."""
        total = 0
        for port in self.ports:
            try:
                text = self._http.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.HTTPError:
                return self._stored_last
            for line in text.splitlines():
                if line.startswith(_STORED_TELEMETRY):
                    total += int(float(line.rsplit(" ", 1)[1]))
        self._stored_last = total
        return total

    def command_batches(self) -> dict[str, tuple[float, float]]:
        """Per command stage (create, dispatch, results): (transactions, items in them) over
        all workers so far, from `tgw_commands_batch_size`."""
        totals: dict[str, list[float]] = {}
        for port in self.ports:
            text = self._http.get(f"http://127.0.0.1:{port}/metrics").text
            for line in text.splitlines():
                for series, index in (("_count{", 0), ("_sum{", 1)):
                    if line.startswith("tgw_commands_batch_size" + series):
                        stage = line.split('stage="', 1)[1].split('"', 1)[0]
                        totals.setdefault(stage, [0.0, 0.0])[index] += float(line.rsplit(" ", 1)[1])
        return {stage: (count, items) for stage, (count, items) in totals.items()}

    def batch_totals(self) -> tuple[float, float, float]:
        """(batches, messages in them, seconds spent writing them) over all workers so far."""
        totals = dict.fromkeys(_BATCH_SERIES, 0.0)
        for port in self.ports:
            text = self._http.get(f"http://127.0.0.1:{port}/metrics").text
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in totals:
                    totals[name] += float(value)
        batches, messages, seconds = (totals[name] for name in _BATCH_SERIES)
        return batches, messages, seconds

    def processes(self) -> list[psutil.Process]:
        """The supervisor and its workers."""
        parent = psutil.Process(self.pid)
        return [parent, *parent.children(recursive=True)]

    def worker_pids(self) -> list[int]:
        children = psutil.Process(self.pid).children(recursive=True)
        return [child.pid for child in children] or [self.pid]

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (flush, commit, acknowledge), then wait; SIGKILL after `timeout_s`."""
        self._http.close()
        if self._process is None or self._process.poll() is not None:
            return None if self._process is None else self._process.returncode
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            return self._process.wait()


class ProcessGroupSampler:
    """CPU time and resident memory of a changing set of processes, sampled on demand."""

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}
        self._cpu_done: dict[int, float] = {}

    def _cpu_of(self, process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return self._cpu_done.get(process.pid, 0.0)
        total = times.user + times.system
        self._cpu_done[process.pid] = total
        return total

    def sample(self, processes: list[psutil.Process]) -> tuple[float, float, float]:
        """(CPU seconds used so far by every process ever seen, RSS MiB of those alive now
        together, RSS MiB of the largest)."""
        for process in processes:
            self._seen.setdefault(process.pid, process)
        sizes = []
        for process in processes:
            try:
                sizes.append(process.memory_info().rss)
            except psutil.Error:
                continue
        cpu = sum(self._cpu_of(process) for process in self._seen.values())
        return cpu, sum(sizes) / 2**20, max(sizes, default=0) / 2**20
