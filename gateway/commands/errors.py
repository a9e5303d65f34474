"""Errors of the command system (all under `gateway.errors.GatewayError`).

GatewayError
 +-- CommandError              a command cannot be created, signed or sent
      +-- SigningKeyError      the signing key is missing, unreadable, unsafe or malformed
      +-- CommandRefusedError  the request is refused (unknown car, capability, busy, ...)
      +-- PublishError         the broker did not take the command
"""

from __future__ import annotations

from gateway.errors import GatewayError

__all__ = ["CommandError", "CommandRefusedError", "PublishError", "SigningKeyError"]


class CommandError(GatewayError):
    """Root of the command system's errors."""


class SigningKeyError(CommandError):
    """The command-signing key cannot be used; the message says which file and why."""


class CommandRefusedError(CommandError):
    """A command request the gateway refuses at once.

    Args:
        message: what was wrong, for a person.
        status: the HTTP status the API answers with.
        kind: a stable slug for the problem type (`unknown-vehicle`, `unsupported-action`, ...).
        retry_after_s: when trying again may work (a rate limit), for `Retry-After`.
    """

    def __init__(
        self, message: str, *, status: int, kind: str, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.retry_after_s = retry_after_s


class PublishError(CommandError):
    """The broker did not acknowledge a command (not connected, refused, or no PUBACK in time)."""
