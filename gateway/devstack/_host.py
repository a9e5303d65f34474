"""What the private services need from the host: free ports, service users, file ownership,
and waiting for a health check with a deadline.

We often run as root (CI, the set-up). PostgreSQL refuses to run as root and Mosquitto drops to
its own user, so the files each service reads must belong to (or be reachable by) that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from gateway.errors import DevStackError

__all__ = [
    "ServiceUser",
    "ensure_traversable",
    "free_port",
    "give_to",
    "log_tail",
    "port_is_free",
    "running_as_root",
    "service_user",
    "wait_until",
]

_log = structlog.get_logger(__name__)
T = TypeVar("T")

LOOPBACK = "127.0.0.1"
# Between two health probes: short enough to start fast, long enough not to spin a core.
_POLL_INTERVAL_S = 0.05


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it; it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind `host:port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a port in TIME_WAIT counts as free, as it is for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The unprivileged account a service runs as when we are root."""

    name: str
    uid: int
    gid: int


def service_user(*candidates: str) -> ServiceUser | None:
    """The first of `candidates` that exists on this machine, or None."""
    for name in candidates:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    return None


def give_to(user: ServiceUser, *paths: Path, recursive: bool = False) -> None:
    """Make `user` the owner of `paths` (and, if `recursive`, of everything below them)."""
    for path in paths:
        os.chown(path, user.uid, user.gid)
        if recursive and path.is_dir():
            for below in path.rglob("*"):
                os.chown(below, user.uid, user.gid, follow_symlinks=False)


def _can_traverse(st: os.stat_result, user: ServiceUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def ensure_traversable(path: Path, user: ServiceUser) -> None:
    """Let `user` reach `path`: add the search (x) bit for others on ancestors that lack it.

    Only the x bit: others may then pass through (e.g. pytest's 0700 temp root) but still not
    list or read anything there.
    """
    for ancestor in reversed(path.resolve().parents):
        st = ancestor.stat()
        if not _can_traverse(st, user):
            os.chmod(ancestor, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            _log.debug("devstack.traverse_granted", path=str(ancestor), user=user.name)


def log_tail(log_file: Path, lines: int = 15) -> str:
    """The last lines of a service's log, for an error message (empty if there is no log)."""
    with contextlib.suppress(OSError):
        text = log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return ""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    log_file: Path,
    alive: Callable[[], bool] | None = None,
) -> T:
    """Poll `probe` until it returns something other than None, or fail at the deadline.

    Args:
        probe: one health check; returns None while the service is not ready yet.
        timeout_s: the deadline, counted from now.
        what: the service, for the error message ("Mosquitto on 127.0.0.1:1883").
        log_file: named in the error, with its last lines, so the cause is one look away.
        alive: returns False once the service's process has died, to fail at once.

    Raises:
        DevStackError: the service died or was not ready before the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if alive is not None and not alive():
            problem = "exited during start-up"
            break
        if time.monotonic() >= deadline:
            problem = f"was not ready within {timeout_s:g} s"
            break
        time.sleep(_POLL_INTERVAL_S)
    tail = log_tail(log_file)
    detail = f"\nlast lines of {log_file}:\n{tail}" if tail else f" (no output in {log_file})"
    raise DevStackError(f"{what} {problem}; see {log_file}{detail}")
