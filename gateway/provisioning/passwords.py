"""The broker's password file, changed safely while Mosquitto may re-read it at any moment.

- One writer at a time: an exclusive `flock` on `.<name>.lock` beside the file.
- Atomic: a temporary file in the same directory replaces the old one (Mosquitto never sees a
  half-written file), with the old file's owner and mode (it must stay readable by mosquitto).
- Hashes only, in Mosquitto's own `$7$` format; a line without a hash would let anybody log in
  with that username and no password, so such lines are never written (and dropped if found).

Staged rotations live beside it in `<name>.pending` (the new hash per car, until
`tgw rotate VIN --finish`); Mosquitto never reads that file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.provisioning.errors import ProvisioningError

__all__ = ["AccountFiles", "PasswordEntries", "hash_password", "password_matches"]

_log = structlog.get_logger(__name__)

_NEW_FILE_MODE = 0o640
# mosquitto_passwd's defaults (Mosquitto 2.0, "$7$" = PBKDF2-HMAC-SHA512). Our passwords are
# 32 random characters, so a low count does not make a leaked file crackable.
_HASH_ITERATIONS = 101
_SALT_BYTES = 12
_BAD_USERNAME_CHARS = frozenset(":+#/\n\r \t")


def _check_username(username: str) -> str:
    if not username or len(username) > 64 or set(username) & _BAD_USERNAME_CHARS:
        raise ProvisioningError(f"{username!r} cannot be a broker username")
    return username


def _check_hash(hashed: str) -> str:
    # "$7$iterations$salt$hash" (PBKDF2-SHA512) or "$6$salt$hash" (SHA512, older files).
    if not hashed.startswith(("$7$", "$6$")) or any(c in hashed for c in ":\n\r "):
        raise ProvisioningError("refusing to write a password entry without a Mosquitto hash")
    return hashed


def _parse(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        username, sep, hashed = line.partition(":")
        if not sep or not hashed.strip():
            _log.warning(
                "provision.password_line_without_hash_dropped", file=str(path), line=number
            )
            continue
        entries[username] = hashed.strip()
    return entries


def _write(path: Path, entries: dict[str, str], *, default_mode: int) -> None:
    text = "".join(f"{_check_username(u)}:{_check_hash(h)}\n" for u, h in entries.items())
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) if old is not None else default_mode
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, old.st_uid, old.st_gid)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ProvisioningError(
            f"cannot write {path}: {exc.strerror}; run tgw provision as a user that may "
            "change the broker's password file"
        ) from exc


@dataclass
class PasswordEntries:
    """The password file's entries and the staged rotations, as read under the lock."""

    accounts: dict[str, str]
    pending: dict[str, str]


class AccountFiles:
    """The broker's password file and its `.pending` companion.

    Args:
        password_file: the file `password_file` in mosquitto.conf names.
    """

    def __init__(self, password_file: Path) -> None:
        self.password_file = password_file
        self.pending_file = password_file.with_name(f"{password_file.name}.pending")
        self._lock_file = password_file.with_name(f".{password_file.name}.lock")

    def read(self) -> PasswordEntries:
        """A snapshot (for checks; change them under `locked`)."""
        return PasswordEntries(_parse(self.password_file), _parse(self.pending_file))

    @contextlib.contextmanager
    def locked(self) -> Iterator[PasswordEntries]:
        """Hold the writers' lock (also across the reload that follows a write); yield the
        entries as they are now. Change them, then `write` them, inside the block."""
        if not self.password_file.parent.is_dir():
            raise ProvisioningError(
                f"{self.password_file.parent} does not exist: set broker.password_file to the "
                "path mosquitto.conf names"
            )
        try:
            lock = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ProvisioningError(f"cannot lock {self._lock_file}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.read()
        finally:
            os.close(lock)  # releases the flock

    def write(self, entries: PasswordEntries) -> None:
        """Write both files atomically (call inside `locked`)."""
        _write(self.pending_file, entries.pending, default_mode=0o600)
        _write(self.password_file, entries.accounts, default_mode=_NEW_FILE_MODE)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The `$7$` hash Mosquitto 2.0 checks (as `mosquitto_passwd` writes it)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _HASH_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_HASH_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def password_matches(password: str, hashed: str) -> bool:
    """Whether `password` is the one behind a Mosquitto `$7$` hash (constant-time compare)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)
