"""A private PostgreSQL cluster (initdb + pg_ctl), with TimescaleDB preloaded when installed.

PostgreSQL refuses to run as root, so when we are root every server command runs as the
`postgres` account through `runuser`, and the data directory belongs to it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import psycopg
import structlog
from psycopg import sql

from gateway.devstack._host import (
    LOOPBACK,
    ServiceUser,
    ensure_traversable,
    free_port,
    give_to,
    log_tail,
    port_is_free,
    running_as_root,
    service_user,
    wait_until,
)
from gateway.errors import DevStackError

__all__ = [
    "PG_BINDIR_ENV",
    "PostgresServer",
    "pg_bindir",
    "timescaledb_installed",
]

_log = structlog.get_logger(__name__)

PG_BINDIR_ENV = "TGW_PG_BINDIR"
# The TimescaleDB build (scripts/build_timescaledb.sh) targets this major version.
_PREFERRED_MAJOR = 15
_SETTINGS_FILE = "tgw-devstack.conf"
_INCLUDE_LINE = f"include_if_exists = '{_SETTINGS_FILE}'"
# A Unix socket path (directory + "/.s.PGSQL.NNNNN") must fit in sockaddr_un.sun_path.
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535")

StopMode = Literal["smart", "fast", "immediate"]


def pg_bindir() -> Path:
    """PostgreSQL's server binaries: $TGW_PG_BINDIR, else version 15's, else the newest."""
    override = os.environ.get(PG_BINDIR_ENV)
    candidates = [Path(override)] if override else []
    candidates.append(Path(f"/usr/lib/postgresql/{_PREFERRED_MAJOR}/bin"))
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(installed)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise DevStackError(
        "PostgreSQL server binaries not found: run scripts/setup.sh (Debian package "
        f"postgresql-{_PREFERRED_MAJOR}), or set {PG_BINDIR_ENV}"
    )


def _pg_config(bindir: Path, flag: str) -> Path:
    pg_config = bindir / "pg_config"
    if not pg_config.is_file():
        raise DevStackError(
            f"{pg_config} not found: install postgresql-server-dev-{_PREFERRED_MAJOR}"
        )
    out = subprocess.run(  # noqa: S603 - fixed binary and flag
        [str(pg_config), flag], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def timescaledb_installed(bindir: Path | None = None) -> bool:
    """Whether TimescaleDB is installed for this PostgreSQL (control file and library)."""
    try:
        bindir = bindir or pg_bindir()
        sharedir = _pg_config(bindir, "--sharedir")
        pkglibdir = _pg_config(bindir, "--pkglibdir")
    except (DevStackError, subprocess.CalledProcessError):
        return False
    return (sharedir / "extension" / "timescaledb.control").is_file() and (
        pkglibdir / "timescaledb.so"
    ).is_file()


class PostgresServer:
    """A private PostgreSQL cluster on a loopback port (a sync context manager).

    `data_dir` is the cluster (PGDATA), created by initdb on first start and reused after, so
    `stop()` then `start()` keeps the data. The server log is `data_dir/postgresql.log` and the
    Unix socket lives in `data_dir` too. Authentication: `trust` on loopback when no password
    is given (fine for a private test cluster nobody else can reach by accident), otherwise
    scram-sha-256 for TCP with `password` for the superuser `postgres`.

    Args:
        data_dir: the cluster directory.
        port: TCP port on 127.0.0.1; None picks a free one (kept across stop/start).
        timescaledb: None = preload TimescaleDB when installed; True = require it; False = never.
        password: the superuser's password, or None for trust authentication.
        durable: False turns off fsync and friends: much faster, and safe as long as the
            machine does not crash (test clusters are thrown away anyway).
        start_timeout_s: deadline for start-up (including crash recovery after a kill).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        timescaledb: bool | None = None,
        password: str | None = None,
        durable: bool = True,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._data_dir = data_dir.resolve()
        self._port = port
        self._password = password
        self._durable = durable
        self._start_timeout_s = start_timeout_s
        self._bindir = pg_bindir()
        installed = timescaledb_installed(self._bindir)
        if timescaledb and not installed:
            raise DevStackError(
                "TimescaleDB was requested but is not installed for "
                f"{self._bindir}: run scripts/build_timescaledb.sh, or use plain PostgreSQL"
            )
        self._timescaledb = installed if timescaledb is None else timescaledb
        self._owner: ServiceUser | None = None
        if running_as_root():
            self._owner = service_user("postgres")
            if self._owner is None:
                raise DevStackError(
                    "running as root, but there is no 'postgres' user to run PostgreSQL as: "
                    "install the postgresql package (it creates one)"
                )

    # -- what clients need ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevStackError("the database has no port before it was started")
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self._data_dir / "postgresql.log"

    @property
    def timescaledb_enabled(self) -> bool:
        """Whether the server preloads TimescaleDB (so `CREATE EXTENSION timescaledb` works)."""
        return self._timescaledb

    @property
    def superuser(self) -> str:
        return "postgres"

    @property
    def running(self) -> bool:
        if not (self._data_dir / "PG_VERSION").exists():
            return False
        status = self._run("pg_ctl", "status", "-D", str(self._data_dir), check=False)
        return status.returncode == 0

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` as the superuser."""
        auth = "postgres"
        if self._password is not None:
            auth += ":" + quote(self._password, safe="")
        return f"postgresql://{auth}@{LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the cluster if needed, start it and wait until it accepts connections.

        Raises:
            DevStackError: PostgreSQL is missing, the port is taken, or it did not come up.
        """
        if self.running:
            return
        if self._port is None:
            self._port = free_port()
        elif not self._port_frees_up(self._port):
            # Also after a stop: clients hold this port, so moving elsewhere would strand them.
            raise DevStackError(
                f"port {self._port} on {LOOPBACK} is in use: stop what listens there "
                "or choose another port"
            )
        self._initdb()
        self._write_settings()
        what = f"PostgreSQL on {LOOPBACK}:{self._port}"
        started = self._run(
            "pg_ctl", "start", "-D", str(self._data_dir), "-l", str(self.log_file),
            "-w", "-t", str(int(self._start_timeout_s)), check=False,
        )  # fmt: skip
        if started.returncode != 0:
            tail = log_tail(self.log_file)
            raise DevStackError(
                f"{what} did not start (pg_ctl: {started.stdout.strip()}); see {self.log_file}"
                + (f"\nlast lines of {self.log_file}:\n{tail}" if tail else "")
            )
        wait_until(
            self._accepts_connections,
            timeout_s=self._start_timeout_s,
            what=what,
            log_file=self.log_file,
        )
        _log.info(
            "devstack.postgres_started",
            port=self._port,
            timescaledb=self._timescaledb,
            data_dir=str(self._data_dir),
        )

    @staticmethod
    def _port_frees_up(port: int, within_s: float = 10.0) -> bool:
        # While the server is down, a client retrying it can be handed this very port as its
        # own ephemeral source port and connect to itself (TCP self-connect on loopback);
        # such a socket is gone as soon as the client gives up, so wait briefly for it.
        deadline = time.monotonic() + within_s
        while not port_is_free(port):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (`fast`: disconnect clients, shut down cleanly); idempotent.

        `immediate` is a crash from the database's point of view: the next start recovers.
        """
        if not self.running:
            return
        stopped = self._run(
            "pg_ctl", "stop", "-D", str(self._data_dir), "-m", mode, "-w", "-t", "60",
            check=False,
        )  # fmt: skip
        if stopped.returncode != 0 and self.running:
            raise DevStackError(
                f"PostgreSQL on port {self._port} did not stop: {stopped.stdout.strip()}; "
                f"see {self.log_file}"
            )
        _log.info("devstack.postgres_stopped", port=self._port, mode=mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _accepts_connections(self) -> bool | None:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return None
        return True

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self._bindir / tool), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.name, "--", *command]
        result = subprocess.run(  # noqa: S603 - our own binaries and arguments, no shell
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            # "/" rather than our cwd, which the postgres user may not be allowed to enter.
            cwd="/",
            check=False,
            # The server must not share our terminal's process group: Ctrl-C is ours to handle.
            start_new_session=True,
        )
        if check and result.returncode != 0:
            raise DevStackError(
                f"{tool} {' '.join(args)} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def _initdb(self) -> None:
        if (self._data_dir / "PG_VERSION").exists():
            return
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if any(self._data_dir.iterdir()):
            raise DevStackError(
                f"{self._data_dir} is neither empty nor a PostgreSQL cluster: "
                "remove it or choose another directory"
            )
        os.chmod(self._data_dir, 0o700)
        if self._owner is not None:
            give_to(self._owner, self._data_dir)
            ensure_traversable(self._data_dir, self._owner)
        args = ["-D", str(self._data_dir), "-U", "postgres", "-E", "UTF8", "--locale=C"]
        if self._password is None:
            args.append("--auth=trust")
            self._run("initdb", *args)
        else:
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False) as pwfile:
                pwfile.write(self._password + "\n")
            try:
                if self._owner is not None:
                    give_to(self._owner, Path(pwfile.name))
                # Socket: only reachable inside the 0700 data dir; TCP needs the password.
                self._run(
                    "initdb", *args, "--auth-local=trust", "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile.name}",
                )  # fmt: skip
            finally:
                Path(pwfile.name).unlink()
        with (self._data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# tgw devstack settings, rewritten at every start:\n{_INCLUDE_LINE}\n")
        _log.info("devstack.postgres_initdb", data_dir=str(self._data_dir))

    def _write_settings(self) -> None:
        socket_dir = str(self._data_dir) if len(str(self._data_dir)) <= _MAX_SOCKET_DIR else ""
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{socket_dir}'",
            "max_connections": "200",
            "timezone": "'UTC'",
        }
        if self._timescaledb:
            settings["shared_preload_libraries"] = "'timescaledb'"
            # No phone-home from a private cluster.
            settings["timescaledb.telemetry_level"] = "off"
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = self._data_dir / _SETTINGS_FILE
        path.write_text(text, encoding="utf-8")
        if self._owner is not None:
            give_to(self._owner, path)

    # -- databases --------------------------------------------------------------------------

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (optionally copied from `template`); return its DSN."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._admin(query)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting its clients first."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def database_exists(self, name: str) -> bool:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def _admin(self, query: sql.Composed) -> None:
        try:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                conn.execute(query)
        except psycopg.Error as exc:
            raise DevStackError(f"PostgreSQL on port {self._port}: {exc}") from exc


def random_password() -> str:
    """A password for a private cluster (URL-safe, so it fits a DSN unquoted)."""
    return secrets.token_urlsafe(24)
