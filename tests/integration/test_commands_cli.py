"""`tgw lock/unlock`, `tgw token` and `tgw keys` as a person runs them: real processes."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.auth import Role
from gateway.commands.signing import KeyPairFiles, load_signing_key
from gateway.devstack import CarCredentialsFactory, MosquittoBroker
from tests.integration.command_support import (
    command_gateway_settings,
    make_keys,
    make_token,
    registered_car,
    rejects,
)
from tests.integration.ingest_support import fetch, running_gateway

pytestmark = pytest.mark.timeout(120)

TGW = str(Path(sys.executable).parent / "tgw")


@dataclass
class Run:
    code: int
    out: str
    err: str


async def tgw(*args: str, env: dict[str, str] | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        TGW,
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return make_keys(tmp_path / "keys")


async def test_token_create_list_revoke(migrated_database: str) -> None:
    env = {"TGW_DATABASE__DSN": migrated_database}
    created = await tgw("token", "create", "--name", "alice", "--role", "operator", env=env)
    assert created.code == 0, created.err
    secret = created.out.strip()
    assert secret.startswith("tgw_")
    assert "shown only now" in created.err
    duplicate = await tgw("token", "create", "--name", "alice", "--role", "viewer", env=env)
    assert duplicate.code == 1
    assert "exists already" in duplicate.err
    assert "Traceback" not in duplicate.err
    listed = await tgw("token", "list", env=env)
    assert "alice" in listed.out
    assert "operator" in listed.out
    assert secret not in listed.out
    revoked = await tgw("token", "revoke", "alice", env=env)
    assert revoked.code == 0
    assert (await tgw("token", "list", env=env)).out.startswith("no tokens")
    assert "revoked" in (await tgw("token", "list", "--all", env=env)).out
    rows = await fetch(migrated_database, "SELECT action FROM audit_log ORDER BY id")
    assert [row[0] for row in rows] == ["token.created", "token.revoked"]


async def test_keys_create_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    run = await tgw("keys", "create", "--out", str(tmp_path / "k"), "--key-id", "fleet-2026")
    assert run.code == 0, run.err
    private = tmp_path / "k" / "fleet-2026.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_signing_key(private)
    assert key.key_id == "fleet-2026"
    assert f'"fleet-2026" = "{key.public_hex}"' in run.out
    assert "PRIVATE" not in run.out
    again = await tgw("keys", "create", "--out", str(tmp_path / "k"), "--key-id", "fleet-2026")
    assert again.code == 1
    assert "exists already" in again.err
    shown = await tgw("keys", "show", str(tmp_path / "k" / "fleet-2026.pub"))
    assert key.public_hex in shown.out


async def test_lock_and_unlock_show_progress_and_exit_with_the_outcome(
    mqtt_broker: MosquittoBroker,
    migrated_database: str,
    car_credentials: CarCredentialsFactory,
    keys: KeyPairFiles,
) -> None:
    settings = command_gateway_settings(mqtt_broker, migrated_database, keys)
    token = await make_token(migrated_database, "nina", Role.OPERATOR)
    viewer = await make_token(migrated_database, "vic", Role.VIEWER)
    url = f"http://127.0.0.1:{settings.http.port}"
    env = {"TGW_API_URL": url, "TGW_API_TOKEN": token}
    async with running_gateway(settings):
        async with registered_car(car_credentials(), keys, dsn=migrated_database) as car:
            ok = await tgw("unlock", car.vin, env=env)
            assert ok.code == 0, ok.err
            for status in ("queued", "sent", "accepted", "executed"):
                assert status in ok.out
            assert f"unlock {car.vin}: executed" in ok.out
            # A viewer may not, and is told so.
            refused = await tgw("lock", car.vin, env={**env, "TGW_API_TOKEN": viewer})
            assert refused.code == 2
            assert "role viewer" in refused.err
            no_token = await tgw("lock", car.vin, env={"TGW_API_URL": url})
            assert no_token.code == 2
            assert "TGW_API_TOKEN" in no_token.err
        async with registered_car(
            car_credentials(),
            keys,
            rejects("precondition_failed", "doors_closed"),
            dsn=migrated_database,
        ) as car:
            rejected = await tgw("lock", car.vin, env=env)
    assert rejected.code == 1
    assert (
        "rejected by the car: precondition_failed (doors_closed); "
        "a door is open: close it, then try again" in rejected.err
    ), rejected.out
    assert "Traceback" not in rejected.err


async def test_cli_says_when_the_gateway_is_not_there() -> None:
    run = await tgw(
        "lock", "WVWZZZ1JZXW000001", env={"TGW_API_URL": "http://127.0.0.1:9", "TGW_API_TOKEN": "x"}
    )
    assert run.code == 2
    assert "cannot reach the gateway API" in run.err
