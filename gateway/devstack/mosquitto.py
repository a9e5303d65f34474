"""A private Mosquitto broker rendered from the repository's own mosquitto.conf and ACL.

The broker is production-shaped (no anonymous access, password file, ACL, dynamic-security
plugin for subscribe ACLs, persistence); only the port and file paths differ. Accounts are
added while it runs: the password file is rewritten and Mosquitto reloads it on SIGHUP without
dropping connected clients; cars also become clients of the dynamic-security plugin (role
`tgw-car`), so they cannot subscribe to other cars' data or join the gateway's share group.
Optionally it also listens with TLS (the template's TLS listener block, on a second port).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.devstack._host import (
    LOOPBACK,
    ServiceUser,
    ensure_traversable,
    free_port,
    give_to,
    port_is_free,
    running_as_root,
    service_user,
    wait_until,
)
from gateway.devstack.accounts import BrokerAccount
from gateway.errors import DevStackError, GatewayError
from gateway.provisioning.dynsec import DynsecAdmin
from gateway.provisioning.endpoint import BrokerEndpoint
from schemas.vin import parse_vin

__all__ = [
    "ADMIN_USERNAME",
    "CAR_ROLE",
    "DEFAULT_GATEWAY_USERNAME",
    "BrokerTls",
    "MosquittoBroker",
    "connack_reason",
    "mosquitto_password_hash",
    "read_password_file",
    "render_acl",
    "render_config",
    "render_tls_listener",
    "write_password_file",
]

_log = structlog.get_logger(__name__)

DEFAULT_GATEWAY_USERNAME = "tgw-gateway"
# Our own probe account: no ACL rights at all. Probing with a real account would take over that
# account's session, because the broker uses the username as the client id.
PROBE_USERNAME = "tgw-devstack-probe"
# The provisioning account (mosquitto.acl): drives the dynamic-security plugin, nothing else.
ADMIN_USERNAME = "tgw-provisioner"
# The plugin's role for cars (mosquitto-dynsec.json): subscribe to commands topics only.
CAR_ROLE = "tgw-car"

_REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_TEMPLATE_ENV = "TGW_MOSQUITTO_CONF_TEMPLATE"
ACL_TEMPLATE_ENV = "TGW_MOSQUITTO_ACL_TEMPLATE"
DYNSEC_TEMPLATE_ENV = "TGW_MOSQUITTO_DYNSEC_TEMPLATE"
_DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
_TLS_BLOCK_BEGIN = "# tgw-render: tls-listener begin"
_TLS_BLOCK_END = "# tgw-render: tls-listener end"
_COMMENTED_SETTING = re.compile(r"^#([a-z_]+)(?: (.*))?$")
_RENDER_MARK = re.compile(r"^#\s*tgw-render:\s*(\S+)\s*$")
_GATEWAY_BLOCK_BEGIN = "# tgw-render: gateway-account begin"
_GATEWAY_BLOCK_END = "# tgw-render: gateway-account end"

# Mosquitto 2.0's own format ("$7$": PBKDF2-HMAC-SHA512), as `mosquitto_passwd` writes it.
# 101 iterations is mosquitto_passwd's default; our passwords are long random tokens, so the
# low count does not make a leaked file crackable, and each connect stays cheap.
_HASH_ITERATIONS = 101
_RESEND_HUP_AFTER_S = 2.0
_SALT_BYTES = 12


def _template(env: str, name: str) -> Path:
    override = os.environ.get(env)
    path = Path(override) if override else _REPO_ROOT / name
    if not path.is_file():
        raise DevStackError(
            f"broker template {path} not found: run from a tgw source checkout, "
            f"or point {env} at the file"
        )
    return path


def render_config(template: str, values: Mapping[str, str]) -> str:
    """Replace the setting line after each `# tgw-render: NAME` marker with `values[NAME]`.

    Every marker in the template must have a value and every value a marker, exactly once, so
    a drifted template fails loudly instead of silently running with production paths.
    """
    lines = template.splitlines()
    seen: set[str] = set()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        mark = _RENDER_MARK.match(line)
        index += 1
        if mark is None or mark.group(1) in {"gateway-account"}:
            continue
        name = mark.group(1)
        if name in seen:
            raise DevStackError(f"mosquitto.conf template: marker {name!r} appears twice")
        if name not in values:
            raise DevStackError(f"mosquitto.conf template: no value to render {name!r}")
        if index >= len(lines) or not lines[index].strip() or lines[index].startswith("#"):
            raise DevStackError(f"mosquitto.conf template: marker {name!r} has no setting below")
        seen.add(name)
        out.append(values[name])
        index += 1  # the template's own setting line is replaced
    missing = set(values) - seen
    if missing:
        raise DevStackError(f"mosquitto.conf template lacks markers for {sorted(missing)}")
    return "\n".join(out) + "\n"


def render_acl(template: str, gateway_usernames: Sequence[str]) -> str:
    """Repeat the template's gateway-account block once per gateway username."""
    begin = template.find(_GATEWAY_BLOCK_BEGIN)
    end = template.find(_GATEWAY_BLOCK_END)
    if begin < 0 or end < begin:
        raise DevStackError("mosquitto.acl template: gateway-account markers missing")
    block_start = template.index("\n", begin) + 1
    block = template[block_start:end]
    if f"user {DEFAULT_GATEWAY_USERNAME}\n" not in block:
        raise DevStackError(f"mosquitto.acl template: no 'user {DEFAULT_GATEWAY_USERNAME}' line")
    blocks = []
    for username in gateway_usernames:
        _check_username(username)
        blocks.append(block.replace(f"user {DEFAULT_GATEWAY_USERNAME}\n", f"user {username}\n"))
    return template[:block_start] + "\n".join(blocks) + template[end:]


def render_tls_listener(config: str, values: Mapping[str, str]) -> str:
    """Uncomment the template's TLS listener block, replacing the settings named in `values`.

    In the block, `#setting value` lines are settings (uncommented; `values[setting]` replaces
    the value when given) and `# text` lines stay comments. Every key of `values` must occur.
    """
    begin = config.find(_TLS_BLOCK_BEGIN)
    end = config.find(_TLS_BLOCK_END)
    if begin < 0 or end < begin:
        raise DevStackError("mosquitto.conf template: tls-listener markers missing")
    block_start = config.index("\n", begin) + 1
    out: list[str] = []
    seen: set[str] = set()
    for line in config[block_start:end].splitlines():
        setting = _COMMENTED_SETTING.match(line)
        if setting is None:
            out.append(line)
            continue
        name = setting.group(1)
        seen.add(name)
        out.append(f"{name} {values[name]}" if name in values else line[1:])
    missing = set(values) - seen
    if missing:
        raise DevStackError(f"mosquitto.conf TLS block lacks settings {sorted(missing)}")
    return config[:block_start] + "\n".join(out) + "\n" + config[end:]


def dynsec_plugin_path() -> Path:
    """Where Mosquitto's dynamic-security plugin is installed (Debian: /usr/lib/<arch>/)."""
    for pattern in _DYNSEC_PLUGIN_GLOBS:
        for found in sorted(glob.glob(pattern)):
            return Path(found)
    raise DevStackError(
        "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed: "
        "it comes with Debian's mosquitto package (run scripts/setup.sh)"
    )


def _check_username(username: str) -> None:
    # The password file is "user:hash" lines; Mosquitto denies pattern ACLs to names with + # /.
    if not username or any(c in username for c in ":+#/\n\r ") or len(username) > 64:
        raise DevStackError(f"{username!r} is not a usable broker username")


def mosquitto_password_hash(password: str, *, salt: bytes | None = None) -> str:
    """A password-file line's hash that Mosquitto 2.0 accepts (no password on a command line)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _HASH_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_HASH_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def read_password_file(path: Path) -> dict[str, str]:
    """Username -> hash, in file order (empty if the file does not exist)."""
    if not path.exists():
        return {}
    entries: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        username, sep, hashed = line.partition(":")
        if sep:
            entries[username] = hashed
    return entries


def write_password_file(path: Path, entries: Mapping[str, str], owner: ServiceUser | None) -> None:
    """Replace the password file atomically (Mosquitto may re-read it at any moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = "".join(f"{username}:{hashed}\n" for username, hashed in entries.items())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    if owner is not None:
        give_to(owner, tmp)
    tmp.replace(path)


def connack_reason(
    host: str, port: int, username: str | None, password: str | None, *, timeout_s: float = 2.0
) -> ReasonCode | None:
    """Connect once with MQTT 5 and return the broker's CONNACK reason, or None if no answer.

    The client id is the username (the broker enforces that anyway), and the session is clean
    and expires at once, so a probe leaves nothing behind.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=username or "tgw-anonymous-probe",
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    answers: list[ReasonCode] = []

    def on_connect(
        _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        answers.append(reason)

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return None
    try:
        deadline = time.monotonic() + timeout_s
        while not answers and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
    finally:
        client.disconnect()
        client.loop(timeout=0.01)
        sock = client.socket()
        if sock is not None:
            sock.close()
    return answers[0] if answers else None


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The TLS listener's files (`tgw pki init` makes them) and whether it requires client certs."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False


class MosquittoBroker:
    """A private Mosquitto on a loopback port, for tests and the demo (a sync context manager).

    Layout of `work_dir`: `mosquitto.conf` and `acl` (rendered from the repository's
    mosquitto.conf and mosquitto.acl), `passwd`, `dynsec.json` (the dynamic-security plugin's
    clients, from mosquitto-dynsec.json), `data/` (persistence), `mosquitto.log`. Reusing a
    `work_dir` keeps persisted sessions and accounts.

    Run as root, Mosquitto drops to the `mosquitto` user (the template says so); the work files
    are then given to that user and its ancestors made traversable (x bit only).

    Args:
        work_dir: where the broker's files live; created if missing.
        port: the MQTT port; None picks a free one (kept across `restart`).
        gateway_username: the gateway's account, created at start with `gateway_password`.
        gateway_password: None generates a random one (see `gateway_password`).
        start_timeout_s: deadline for the health check at start and after reloads.
        tls: also listen with TLS on `tls_port` (a free one when None), rendered from the
            template's TLS listener block.
        tls_port: the TLS port.
    """

    def __init__(
        self,
        work_dir: Path,
        port: int | None = None,
        *,
        gateway_username: str = DEFAULT_GATEWAY_USERNAME,
        gateway_password: str | None = None,
        start_timeout_s: float = 15.0,
        tls: BrokerTls | None = None,
        tls_port: int | None = None,
    ) -> None:
        _check_username(gateway_username)
        self._tls = tls
        self._tls_port = tls_port
        self._admin_password = secrets.token_urlsafe(24)
        self._work_dir = work_dir.resolve()
        self._port = port
        self._gateway_username = gateway_username
        self._gateway_password = gateway_password or secrets.token_urlsafe(24)
        self._gateway_usernames: list[str] = [gateway_username]
        self._start_timeout_s = start_timeout_s
        self._probe_password = secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None
        self._owner: ServiceUser | None = None

    # -- what clients need ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevStackError("the broker has no port before it was started")
        return self._port

    @property
    def tls_port(self) -> int:
        if self._tls is None or self._tls_port is None:
            raise DevStackError("the broker has no TLS listener (or was not started yet)")
        return self._tls_port

    @property
    def tls(self) -> BrokerTls | None:
        return self._tls

    @property
    def endpoint(self) -> BrokerEndpoint:
        """The plain listener, for tools that take a `BrokerEndpoint`."""
        return BrokerEndpoint(self.host, self.port)

    @property
    def admin_account(self) -> BrokerAccount:
        """The provisioning account: drives the dynamic-security plugin (see mosquitto.acl)."""
        return BrokerAccount(ADMIN_USERNAME, self._admin_password, self.host, self.port)

    @property
    def dynsec_file(self) -> Path:
        return self._work_dir / "dynsec.json"

    @property
    def gateway_username(self) -> str:
        return self._gateway_username

    @property
    def gateway_password(self) -> str:
        return self._gateway_password

    @property
    def gateway_account(self) -> BrokerAccount:
        """The gateway's credentials and where to connect."""
        return BrokerAccount(self._gateway_username, self._gateway_password, self.host, self.port)

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def config_file(self) -> Path:
        return self._work_dir / "mosquitto.conf"

    @property
    def acl_file(self) -> Path:
        return self._work_dir / "acl"

    @property
    def password_file(self) -> Path:
        return self._work_dir / "passwd"

    @property
    def data_dir(self) -> Path:
        return self._work_dir / "data"

    @property
    def log_file(self) -> Path:
        return self._work_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

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
        """Render the files, start Mosquitto and wait until the probe account can connect.

        Raises:
            DevStackError: Mosquitto is missing, the port is taken, or it did not come up.
        """
        if self.running:
            return
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            raise DevStackError(
                "mosquitto is not installed: run scripts/setup.sh (Debian package mosquitto)"
            )
        # Only a port we picked and never used may be swapped for another one.
        attempts = 3 if self._port is None else 1
        pick_tls = self._tls is not None and self._tls_port is None
        for attempt in range(1, attempts + 1):
            if pick_tls:
                self._tls_port = free_port()
            if self._port is None:
                self._port = free_port()
            elif not port_is_free(self._port):
                raise DevStackError(
                    f"port {self._port} on {LOOPBACK} is in use: stop what listens there "
                    "or choose another port"
                )
            try:
                self._start_once(binary)
            except DevStackError:
                # A free port picked by us can be taken before Mosquitto binds it: pick again.
                if attempt == attempts or "Address already in use" not in self._log_text():
                    raise
                self._port = None
                if pick_tls:
                    self._tls_port = None
            else:
                return

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _prepare_files(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        run_as = "mosquitto"
        if running_as_root():
            # Mosquitto falls back to `nobody` when its user is missing; follow it.
            self._owner = service_user("mosquitto", "nobody")
            if self._owner is None:
                raise DevStackError("neither a 'mosquitto' nor a 'nobody' user exists")
            run_as = self._owner.name
        conf = render_config(
            _template(CONFIG_TEMPLATE_ENV, "mosquitto.conf").read_text(encoding="utf-8"),
            {
                "password_file": f"password_file {self.password_file}",
                "acl_file": f"acl_file {self.acl_file}",
                "plugin": f"plugin {dynsec_plugin_path()}",
                "plugin_opt_config_file": f"plugin_opt_config_file {self.dynsec_file}",
                "user": f"user {run_as}",
                "persistence_location": f"persistence_location {self.data_dir}",
                # stderr goes to our log file: start-up errors land there too.
                "log_dest": "log_dest stderr",
                "listener": f"listener {self.port} {LOOPBACK}",
            },
        )
        if self._tls is not None:
            tls = self._tls
            conf = render_tls_listener(
                conf,
                {
                    "listener": f"{self._tls_port} {LOOPBACK}",
                    "cafile": str(tls.ca_file.resolve()),
                    "certfile": str(tls.cert_file.resolve()),
                    "keyfile": str(tls.key_file.resolve()),
                    "require_certificate": "true" if tls.require_certificate else "false",
                    "use_identity_as_username": "true" if tls.use_identity_as_username else "false",
                },
            )
        self.config_file.write_text(conf, encoding="utf-8")
        self._write_acl()
        if not self.dynsec_file.exists():
            # The plugin keeps its clients in this file: a reused work_dir keeps the cars.
            template = _template(DYNSEC_TEMPLATE_ENV, "mosquitto-dynsec.json")
            shutil.copyfile(template, self.dynsec_file)
        entries = read_password_file(self.password_file)
        entries[ADMIN_USERNAME] = mosquitto_password_hash(self._admin_password)
        entries[self._gateway_username] = mosquitto_password_hash(self._gateway_password)
        entries[PROBE_USERNAME] = mosquitto_password_hash(self._probe_password)
        write_password_file(self.password_file, entries, self._owner)
        if self._owner is not None:
            give_to(self._owner, self._work_dir, self.data_dir, recursive=True)
            ensure_traversable(self._work_dir, self._owner)
            if self._tls is not None:
                self._expose_tls_files(self._tls, self._owner)

    @staticmethod
    def _expose_tls_files(tls: BrokerTls, owner: ServiceUser) -> None:
        # Mosquitto reads its TLS files after dropping to its user (and again on SIGHUP).
        for path in (tls.ca_file, tls.cert_file, tls.key_file):
            ensure_traversable(path.resolve().parent, owner)
        give_to(owner, tls.key_file.resolve())

    def _write_acl(self) -> None:
        acl = render_acl(
            _template(ACL_TEMPLATE_ENV, "mosquitto.acl").read_text(encoding="utf-8"),
            self._gateway_usernames,
        )
        tmp = self.acl_file.with_name(".acl.tmp")
        tmp.write_text(acl, encoding="utf-8")
        if self._owner is not None:
            give_to(self._owner, tmp)
        tmp.replace(self.acl_file)

    @property
    def pid_file(self) -> Path:
        return self._work_dir / "mosquitto.pid"

    def _reap_orphan(self) -> None:
        """Stop a broker an earlier, killed run left behind on this work dir (it holds the port)."""
        try:
            pid = int(self.pid_file.read_text(encoding="utf-8").strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.config_file).encode() not in cmdline:
            return  # the pid was reused by something else
        _log.warning("devstack.broker_orphan_stopped", pid=pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _start_once(self, binary: str) -> None:
        self._reap_orphan()
        self._prepare_files()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config file
                [binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self._work_dir,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only our CLI
            )
        self.pid_file.write_text(f"{self._process.pid}\n", encoding="utf-8")
        try:
            self._wait_ready(self._probe_password)
        except DevStackError:
            self._terminate()
            raise
        _log.info("devstack.broker_started", port=self._port, pid=self._process.pid)

    def _wait_ready(self, probe_password: str, *, resend_hup: bool = False) -> None:
        last_hup = time.monotonic()

        def accepted() -> bool | None:
            nonlocal last_hup
            reason = connack_reason(LOOPBACK, self.port, PROBE_USERNAME, probe_password)
            if reason is not None and not reason.is_failure:
                return True
            # Seen under load: a reload that never happens. SIGHUP is idempotent, so ask again.
            if resend_hup and time.monotonic() - last_hup > _RESEND_HUP_AFTER_S:
                _log.warning("devstack.broker_reload_resent", port=self._port)
                self.reload()
                last_hup = time.monotonic()
            return None

        wait_until(
            accepted,
            timeout_s=self._start_timeout_s,
            what=f"Mosquitto on {LOOPBACK}:{self._port}",
            log_file=self.log_file,
            alive=lambda: self.running,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker cleanly (it saves its persistence file); idempotent."""
        if self._process is None:
            return
        self._terminate(timeout_s)
        _log.info("devstack.broker_stopped", port=self._port)

    def kill(self) -> None:
        """Kill the broker with SIGKILL (a crash: no final persistence save); idempotent."""
        process, self._process = self._process, None
        self.pid_file.unlink(missing_ok=True)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _terminate(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        self.pid_file.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _log.warning("devstack.broker_kill", port=self._port, waited_s=timeout_s)
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence directory."""
        self.stop()
        self.start()

    # -- accounts ---------------------------------------------------------------------------

    def add_account(self, username: str, password: str | None = None) -> str:
        """Create or replace a broker account; return its password (random if not given).

        Takes effect without dropping connected clients (SIGHUP reload); returns once it has.
        """
        _check_username(username)
        password = password or secrets.token_urlsafe(24)
        entries = read_password_file(self.password_file)
        entries[username] = mosquitto_password_hash(password)
        self._commit_accounts(entries)
        return password

    def add_car(self, vin: str, password: str | None = None) -> str:
        """Create a car's account (username = its VIN); return its password.

        The car becomes a dynamic-security client with the car role first, so there is no
        moment in which it can log in without its subscribe ACL.
        """
        vin = parse_vin(vin)
        self.add_subscribe_acl(vin)
        return self.add_account(vin, password)

    def add_subscribe_acl(self, *usernames: str) -> None:
        """Make `usernames` dynamic-security clients with the car role (subscribe ACLs)."""
        with self._dynsec_admin() as admin:
            admin.add_clients(usernames, CAR_ROLE)

    def _dynsec_admin(self) -> DynsecAdmin:
        if not self.running:
            raise DevStackError("the broker is not running")
        return DynsecAdmin(self.endpoint, ADMIN_USERNAME, self._admin_password)

    def add_gateway(self, username: str, password: str | None = None) -> str:
        """Create another gateway account (one per gateway instance) with the gateway's ACL."""
        _check_username(username)
        if username not in self._gateway_usernames:
            self._gateway_usernames.append(username)
            self._write_acl()
        return self.add_account(username, password)

    def remove_account(self, username: str) -> None:
        """Delete an account. The reload re-checks every connected client's password, so the
        account's open connection is closed too (Mosquitto 2.0, security_apply)."""
        entries = read_password_file(self.password_file)
        entries.pop(username, None)
        is_gateway = username in self._gateway_usernames
        if is_gateway and username != self._gateway_username:
            self._gateway_usernames.remove(username)
            self._write_acl()
        self._commit_accounts(entries)
        if not is_gateway and self.running:
            try:
                with self._dynsec_admin() as admin:
                    admin.remove_clients([username])
            except GatewayError as exc:
                raise DevStackError(f"cannot remove {username}'s subscribe ACL: {exc}") from exc

    def _commit_accounts(self, entries: dict[str, str]) -> None:
        # A fresh probe password rides along: once it works, the reload has happened.
        probe_password = secrets.token_urlsafe(24)
        entries[PROBE_USERNAME] = mosquitto_password_hash(probe_password)
        write_password_file(self.password_file, entries, self._owner)
        if self.running:
            self.reload()
            self._wait_ready(probe_password, resend_hup=True)
        self._probe_password = probe_password

    def reload(self) -> None:
        """Ask Mosquitto to re-read its config, password and ACL files (SIGHUP)."""
        if self._process is None or not self.running:
            raise DevStackError("the broker is not running")
        self._process.send_signal(signal.SIGHUP)

    def gateway_usernames(self) -> Iterable[str]:
        """Every gateway account the ACL grants the gateway's rights to."""
        return tuple(self._gateway_usernames)
