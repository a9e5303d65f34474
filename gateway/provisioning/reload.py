"""Making the broker re-read its password file, and knowing that it did.

Mosquitto reloads on SIGHUP without dropping connections; it then re-checks every connected
client's password, so an account that was removed or changed is disconnected at that moment
(the other cars stay connected). How to send the signal is configuration (`broker.reload`):
the pid in `broker.pid_file`, a command such as `systemctl reload mosquitto`, or nothing (the
operator reloads).

Proof of the reload: every change also gives the probe account (`broker.probe_username`, no
rights at all) a fresh random password; once the probe can log in with it, the broker has read
the new file. SIGHUP is repeated while waiting (it is idempotent, and a signal can be missed
while Mosquitto is busy starting up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import structlog

from gateway.config import BrokerSettings
from gateway.provisioning.endpoint import BrokerEndpoint, connack
from gateway.provisioning.errors import BrokerAdminError

__all__ = ["BrokerReloader", "ReloadOutcome"]

_log = structlog.get_logger(__name__)

_RESEND_AFTER_S = 2.0
_POLL_S = 0.1
_COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """Whether the broker has provably read the new files (False: reload is `none`)."""

    confirmed: bool
    waited_s: float


class BrokerReloader:
    """Sends the reload the settings name and waits for the probe to confirm it."""

    def __init__(self, settings: BrokerSettings, endpoint: BrokerEndpoint) -> None:
        self._settings = settings
        self._endpoint = endpoint

    def signal(self) -> bool:
        """Ask the broker to reload; False when `broker.reload` is `none`.

        Raises:
            BrokerAdminError: the pid file is missing or stale, or the command failed.
        """
        settings = self._settings
        if settings.reload == "none":
            return False
        if settings.reload == "command":
            if not settings.reload_command:
                raise BrokerAdminError(
                    "broker.reload is 'command' but broker.reload_command is empty"
                )
            try:
                subprocess.run(  # noqa: S603  # the operator's own configured command
                    list(settings.reload_command),
                    check=True,
                    capture_output=True,
                    timeout=_COMMAND_TIMEOUT_S,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise BrokerAdminError(f"the reload command failed: {exc}") from exc
            return True
        try:
            pid = int(settings.pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError) as exc:
            raise BrokerAdminError(
                f"cannot read the broker's pid from {settings.pid_file}: set broker.pid_file "
                "(mosquitto.conf pid_file), or broker.reload = 'command'"
            ) from exc
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise BrokerAdminError(
                f"no process {pid} (from {settings.pid_file}): is the broker running?"
            ) from exc
        except PermissionError as exc:
            raise BrokerAdminError(
                f"not allowed to signal the broker (pid {pid}): run as its user or root, "
                "or set broker.reload = 'command'"
            ) from exc
        return True

    def reload(self, probe_password: str) -> ReloadOutcome:
        """Signal the broker and wait until the probe logs in with `probe_password`.

        Raises:
            BrokerAdminError: the broker did not take the new files within the deadline.
        """
        started = time.monotonic()
        if not self.signal():
            return ReloadOutcome(confirmed=False, waited_s=0.0)
        last_signal = started
        deadline = started + self._settings.reload_timeout_s
        username = self._settings.probe_username
        while True:
            reason = connack(self._endpoint, username, probe_password)
            now = time.monotonic()
            if reason is not None and not reason.is_failure:
                _log.info("provision.broker_reloaded", waited_s=round(now - started, 3))
                return ReloadOutcome(confirmed=True, waited_s=now - started)
            if now >= deadline:
                raise BrokerAdminError(
                    f"the broker at {self._endpoint} did not take the new password file within "
                    f"{self._settings.reload_timeout_s:g} s (probe {username!r}: {reason}); "
                    "check its log, broker.password_file and broker.pid_file"
                )
            if now - last_signal > _RESEND_AFTER_S:
                self.signal()
                last_signal = now
            time.sleep(_POLL_S)
