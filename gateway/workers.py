"""Several gateway processes on one machine: `tgw gateway run --workers N`.

Python runs one thread of bytecode at a time, so one gateway process uses about one core;
MQTT 5 shared subscriptions let N processes split the cars' messages between them.

Identity: each worker is a full gateway with its own broker session. The broker pins the
client id to the user name (`use_username_as_clientid`), so worker `i` (1..N) connects as
`<username>-<i>` with client id `<client_id>-<i>` and the same password, and serves HTTP on
`<http port> + i - 1`. Worker `i` always takes the same identity, so after a crash or a restart
it resumes its own broker session and receives what it had not yet acknowledged. `--worker-id
i` runs one such worker alone (e.g. one service unit per worker).

Supervision: the parent forwards SIGTERM/SIGINT to every worker and waits for them to flush.
If a worker dies on its own, the parent stops the others and exits non-zero, for the service
manager to restart the whole set: nothing is lost, since unacknowledged messages stay in each
worker's session at the broker. The CLI checks the settings, then replaces itself with
`python -m gateway.workers` (`exec_supervisor`), which imports little: the supervisor holds
about 25 MB instead of the CLI's 70.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import structlog

from gateway.logconfig import configure_logging

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = ["exec_supervisor", "run_workers", "worker_settings"]

log = structlog.get_logger(__name__)

# The child is the ordinary `tgw` entry point, whatever way this process was started.
_CHILD_CODE = "import sys; from gateway.cli import main; sys.argv[0] = 'tgw'; main()"


def worker_settings(settings: Settings, worker_id: int) -> Settings:
    """The settings of worker `worker_id` (1-based): its own account, client id and HTTP port."""
    if worker_id < 1:
        raise ValueError("worker ids start at 1")
    mqtt = settings.mqtt.model_copy(
        update={
            "username": f"{settings.mqtt.username}-{worker_id}",
            "client_id": f"{settings.mqtt.client_id}-{worker_id}",
        }
    )
    port = settings.http.port
    http = settings.http.model_copy(update={"port": port + worker_id - 1 if port else 0})
    return settings.model_copy(update={"mqtt": mqtt, "http": http})


def run_workers(workers: int) -> int:
    """Run `workers` gateway processes until SIGTERM/SIGINT; return the exit status."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for worker_id in range(1, workers + 1):
            command = [sys.executable, "-c", _CHILD_CODE, "gateway", "run"]
            children[worker_id] = subprocess.Popen(  # noqa: S603  # our own entry point
                [*command, "--worker-id", str(worker_id)]
            )
        log.info("gateway.workers_started", pids=[c.pid for c in children.values()])
        by_pid = {child.pid: worker_id for worker_id, child in children.items()}
        while by_pid:
            # Blocks until a worker exits; signal handlers run meanwhile (PEP 475).
            pid, wait_status = os.wait()
            worker_id_or_none = by_pid.pop(pid, None)
            if worker_id_or_none is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            children[worker_id_or_none].returncode = code
            if code != 0:
                status = 1
                log.error("gateway.worker_exit", worker=worker_id_or_none, exit_code=code)
                if not stopping:
                    stop(signal.SIGTERM, None)
        return status
    finally:
        for child in children.values():
            if child.returncode is None:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exec_supervisor(workers: int, log_level: str, json_logs: bool | None) -> NoReturn:
    """Replace this process with the supervisor of `workers` gateway processes."""
    command = [sys.executable, "-m", "gateway.workers", "--workers", str(workers)]
    command += ["--log-level", log_level]
    if json_logs is not None:
        command += ["--json-logs" if json_logs else "--console-logs"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)  # noqa: S606  # our own module, no shell


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.workers")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--json-logs", dest="json", action="store_true", default=None)
    parser.add_argument("--console-logs", dest="json", action="store_false")
    args = parser.parse_args()
    configure_logging(args.log_level, json=args.json)
    return run_workers(args.workers)


if __name__ == "__main__":
    sys.exit(_main())
