"""TLS end to end: `tgw pki init`, the broker's TLS listener (rendered from mosquitto.conf's own
TLS block), a provisioned device_sim unit and the gateway connecting over TLS, client
certificates when the broker requires them, and a rotation the real unit rides through.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.auth import Role
from gateway.config import Settings
from gateway.devstack import MosquittoBroker, random_vin
from gateway.devstack.mosquitto import BrokerTls
from gateway.pki import PkiFiles, init_pki
from gateway.provisioning.carconfig import read_car_config
from gateway.provisioning.endpoint import BrokerEndpoint, connack
from gateway.provisioning.service import CarRequest, Provisioner
from tests.integration.command_support import api, make_token, wait_registered, wait_status
from tests.integration.device_support import wait_until
from tests.integration.ingest_support import gateway_settings, running_gateway, wait_for_value
from tests.integration.security_support import provisioned_car, provisioning_settings

pytestmark = pytest.mark.timeout(180)


def _pki(tmp_path: Path) -> PkiFiles:
    return init_pki(tmp_path / "pki", server_names=["127.0.0.1", "localhost"])


@pytest.fixture
def pki(tmp_path: Path) -> PkiFiles:
    return _pki(tmp_path)


@pytest.fixture
def tls_broker(tmp_path: Path, pki: PkiFiles) -> Iterator[MosquittoBroker]:
    tls = BrokerTls(pki.ca_cert, pki.server_cert, pki.server_key)
    with MosquittoBroker(tmp_path / "mosquitto", tls=tls) as broker:
        yield broker


def _over_tls(settings: Settings, broker: MosquittoBroker, pki: PkiFiles) -> Settings:
    """Tools and gateway on the TLS listener; cars are told to use it too."""
    mqtt = settings.mqtt.model_copy(update={"port": broker.tls_port, "tls_ca_file": pki.ca_cert})
    car_side = settings.broker.model_copy(
        update={"car_port": broker.tls_port, "car_tls_ca_file": pki.ca_cert}
    )
    return settings.model_copy(update={"mqtt": mqtt, "broker": car_side})


def _refused(reason: object) -> bool:
    return reason is None or bool(getattr(reason, "is_failure", True))


def test_pki_init_never_replaces_a_ca(tmp_path: Path) -> None:
    from gateway.pki import PkiError  # noqa: PLC0415

    first = _pki(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="exists already"):
        _pki(tmp_path)
    assert first.ca_cert.read_bytes() == before
    assert first.ca_key.stat().st_mode & 0o077 == 0
    assert first.server_key.stat().st_mode & 0o077 == 0


def test_tls_listener_verifies_and_is_verified(tls_broker: MosquittoBroker, pki: PkiFiles) -> None:
    broker = tls_broker
    account = broker.gateway_account
    tls = BrokerEndpoint(broker.host, broker.tls_port, tls_ca_file=pki.ca_cert)
    reason = connack(tls, account.username, account.password)
    assert reason is not None
    assert not reason.is_failure
    # A client that does not know our CA refuses the broker (no silent downgrade).
    context = ssl.create_default_context()
    import socket  # noqa: PLC0415

    with (
        socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # Plain MQTT on the TLS port gets nowhere.
    assert connack(BrokerEndpoint(broker.host, broker.tls_port), account.username, "x") is None


async def test_full_path_over_tls_car_broker_gateway_database_and_a_signed_command(
    tls_broker: MosquittoBroker, pki: PkiFiles, migrated_database: str, tmp_path: Path
) -> None:
    """car (device_sim, provisioned) -> TLS -> broker -> TLS -> gateway -> database, and back:
    an unlock signed with the car's own key, checked by device_sim's Ed25519 verifier."""
    broker = tls_broker
    base = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    tools = _over_tls(base, broker, pki)
    vin = random_vin()
    config = tmp_path / "car" / f"{vin}.toml"
    await Provisioner(tools, actor="test").provision([CarRequest(vin, "tgw_generic", config)])
    car_config = read_car_config(config, vin=vin)
    assert car_config.port == broker.tls_port
    assert car_config.tls_ca_file is not None
    assert car_config.tls_ca_file.read_bytes() == pki.ca_cert.read_bytes()

    gateway = gateway_settings(broker, migrated_database)
    gateway = gateway.model_copy(
        update={
            "mqtt": gateway.mqtt.model_copy(
                update={"port": broker.tls_port, "tls_ca_file": pki.ca_cert}
            ),
            "commands": base.commands.model_copy(update={"sweep_interval_s": 0.2}),
        }
    )
    token = await make_token(migrated_database, "tls-operator", Role.OPERATOR)
    async with (
        running_gateway(gateway),
        provisioned_car(config, vin, tmp_path / "queue") as car,
        api(gateway, token) as client,
    ):
        assert car.settings.mqtt.tls_ca_file is not None
        await wait_registered(migrated_database, vin)

        await wait_for_value(
            migrated_database,
            "SELECT count(*) > 0 FROM telemetry WHERE vin = %s",
            (vin,),
            True,
        )
        response = await client.post(f"/v1/vehicles/{vin}/commands", json={"action": "unlock"})
        assert response.status_code == 202, response.text
        record = await wait_status(client, response.json()["command_id"], {"verified", "executed"})
        assert car.state.locked is False
    assert record["status"] in {"verified", "executed"}


async def test_broker_requiring_client_certificates(
    tmp_path: Path, pki: PkiFiles, migrated_database: str
) -> None:
    """require_certificate: no certificate, no connection; a certificate alone is not enough
    either (the password is still checked); a provisioned unit has both and connects."""
    tls = BrokerTls(pki.ca_cert, pki.server_cert, pki.server_key, require_certificate=True)
    with MosquittoBroker(tmp_path / "mosquitto", tls=tls) as broker:
        base = provisioning_settings(
            broker,
            migrated_database,
            tmp_path / "keys",
            client_certificates=True,
            ca_cert_file=pki.ca_cert,
            ca_key_file=pki.ca_key,
        )
        # The tools keep using the plain loopback listener here (the TLS one wants certificates).
        settings = base.model_copy(
            update={
                "broker": base.broker.model_copy(
                    update={"car_port": broker.tls_port, "car_tls_ca_file": pki.ca_cert}
                )
            }
        )
        vin = random_vin()
        config = tmp_path / "car" / f"{vin}.toml"
        await Provisioner(settings, actor="test").provision([CarRequest(vin, "vw_mqb", config)])
        car = read_car_config(config, vin=vin)
        assert car.tls_cert_file is not None
        assert car.tls_key_file is not None
        assert car.tls_key_file.stat().st_mode & 0o077 == 0
        car_cert_before = car.tls_cert_file.read_bytes()
        with_ca = BrokerEndpoint(broker.host, broker.tls_port, pki.ca_cert)
        with_cert = BrokerEndpoint(
            broker.host, broker.tls_port, pki.ca_cert, car.tls_cert_file, car.tls_key_file
        )
        assert connack(with_ca, vin, car.password) is None  # handshake refused: no certificate
        refused = connack(with_cert, vin, "not the password")
        assert refused is not None
        assert refused.is_failure
        accepted = connack(with_cert, vin, car.password)
        assert accepted is not None
        assert not accepted.is_failure
        async with provisioned_car(config, vin, tmp_path / "queue") as unit:
            assert unit.unit.connected.is_set()
        # Rotation with certificates: both certificates are valid, only the password switches.
        provisioner = Provisioner(settings, actor="test")
        await provisioner.rotate(vin, config)
        staged = read_car_config(config, vin=vin)
        assert staged.tls_cert_file is not None
        assert staged.tls_cert_file.name == f"{vin}.next.crt"
        with_next = BrokerEndpoint(
            broker.host, broker.tls_port, pki.ca_cert, staged.tls_cert_file, staged.tls_key_file
        )
        assert staged.password_fallback is not None
        assert not _refused(connack(with_next, vin, staged.password_fallback))
        assert _refused(connack(with_next, vin, staged.password))
        await provisioner.finish_rotation(vin, config)
        final = read_car_config(config, vin=vin)
        assert final.tls_cert_file == car.tls_cert_file  # the new certificate, at the old path
        assert final.tls_cert_file.read_bytes() != car_cert_before
        assert not _refused(connack(with_cert, vin, final.password))
        async with provisioned_car(config, vin, tmp_path / "queue2") as unit:
            assert unit.unit.counters.connect_failures == 0


async def test_a_running_unit_rides_through_a_rotation(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    """Staged config: the unit tries the new password, is refused, falls back to the old one.
    Finished: its old-password connection is closed; it reconnects with the new one. A command
    signed with the new key is executed. No step leaves the car unable to connect."""
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    vin = random_vin()
    config = tmp_path / f"{vin}.toml"
    await provisioner.provision([CarRequest(vin, "tgw_generic", config)])
    gateway = gateway_settings(broker, migrated_database)
    gateway = gateway.model_copy(
        update={"commands": settings.commands.model_copy(update={"sweep_interval_s": 0.2})}
    )
    token = await make_token(migrated_database, "rot-operator", Role.OPERATOR)
    async with running_gateway(gateway), api(gateway, token) as client:
        await provisioner.rotate(vin, config)
        async with provisioned_car(config, vin, tmp_path / "queue") as car:
            assert car.unit.counters.connect_failures >= 1  # the new password, refused
            await wait_registered(migrated_database, vin)
            failures, sessions = car.unit.counters.connect_failures, car.unit.counters.sessions
            await provisioner.finish_rotation(vin, config)
            # Kicked by the reload (the lost session counts as a failure), the old password is
            # refused once, and the unit is back with the new one.
            counters = car.unit.counters
            await wait_until(
                lambda: counters.sessions > sessions and car.unit.connected.is_set(),
                what="the reconnect with the new password",
            )
            assert counters.connect_failures - failures == 2
            url = f"/v1/vehicles/{vin}/commands"
            response = await client.post(url, json={"action": "unlock"})
            record = await wait_status(
                client, response.json()["command_id"], {"executed", "verified"}
            )
            assert car.state.locked is False
        assert record["status"] in {"executed", "verified"}
        # The final file: only the new password and the new key; the unit starts with it.
        async with provisioned_car(config, vin, tmp_path / "queue2") as car:
            assert car.unit.counters.connect_failures == 0
            assert len(car.settings.commands.trusted_keys) == 1
            assert car.settings.mqtt.password_fallback is None


def test_secret_str_never_prints_the_admin_password() -> None:
    from gateway.config import BrokerSettings  # noqa: PLC0415

    settings = BrokerSettings(admin_password=SecretStr("s3cr3t-admin-pw-long"))
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings.model_dump())
    with pytest.raises(ValueError, match="well-known default"):
        BrokerSettings(admin_password=SecretStr("changeme"))
