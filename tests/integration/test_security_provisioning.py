"""`tgw provision`, `deprovision` and `rotate` against a real broker and database.

What a provisioned car gets, and that each piece works: its password (the broker takes it on
SIGHUP, other cars stay connected), its dynamic-security client (subscribe ACL), its signing
key, its registration and audit trail, and its configuration file, which device_sim reads.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from device_sim.settings import CONFIG_FILE_ENV, SimSettings
from gateway.cli import app as tgw
from gateway.commands.signing import CommandSigner, load_signing_key
from gateway.devstack import MosquittoBroker, MqttTestClient, random_vin
from gateway.devstack.mosquitto import CAR_ROLE
from gateway.provisioning.carconfig import read_car_config
from gateway.provisioning.dynsec import DynsecAdmin
from gateway.provisioning.errors import ProvisioningError
from gateway.provisioning.service import CarRequest, Provisioner
from schemas import TopicKind, shared_subscription, vehicle_topic
from tests.integration.security_support import (
    audit_actions,
    can_log_in,
    car_account,
    provisioning_settings,
    vehicle_model,
    wait_for,
)

NOT_AUTHORIZED = 0x87
pytestmark = pytest.mark.timeout(120)


def _roles(broker: MosquittoBroker, vin: str) -> tuple[str, ...] | None:
    admin = broker.admin_account
    with DynsecAdmin(broker.endpoint, admin.username, admin.password) as client:
        return client.client_roles(vin)


async def test_provision_gives_a_car_everything_it_needs(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    vin = random_vin()
    config_path = tmp_path / "car" / f"{vin}.toml"

    result = await provisioner.provision([CarRequest(vin, "bmw_e8x", config_path)])

    assert result.reload.confirmed
    # The car's side: private, and exactly what device_sim's settings read.
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    os.environ[CONFIG_FILE_ENV] = str(config_path)
    try:
        sim = SimSettings()
    finally:
        del os.environ[CONFIG_FILE_ENV]
    assert (sim.mqtt.host, sim.mqtt.port, sim.unit.profile) == (broker.host, broker.port, "bmw_e8x")
    assert sim.mqtt.password is not None
    # Its own signing key: the gateway signs this car's commands with the key the car trusts.
    signer = CommandSigner(
        load_signing_key(settings.commands.signing_key_file),  # type: ignore[arg-type]
        settings.commands.vehicle_keys_dir,
    )
    key = signer.key_for(vin)
    assert sim.commands.trusted_keys == {key.key_id: key.public_hex}
    assert result.key_ids[vin] == (key.key_id,)
    # The broker: the password works, publishing its own telemetry works, stealing does not.
    account = car_account(config_path, vin)
    assert account.password == sim.mqtt.password.get_secret_value()
    assert _roles(broker, vin) == (CAR_ROLE,)
    with MqttTestClient(broker.gateway_account) as gateway, MqttTestClient(account) as car:
        gateway.subscribe(shared_subscription(TopicKind.TELEMETRY))
        assert car.publish(vehicle_topic(vin, TopicKind.TELEMETRY), b"hi").value == 0
        assert gateway.next_message().payload == b"hi"
        assert [c.value for c in car.subscribe(shared_subscription(TopicKind.TELEMETRY))] == [
            NOT_AUTHORIZED
        ]
    # The database: registered with its model, audited.
    assert await vehicle_model(migrated_database, vin) == "bmw_e8x"
    assert await audit_actions(migrated_database, vin) == ["vehicle.provisioned"]


async def test_provisioning_refuses_a_car_twice_unless_replaced(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    settings = provisioning_settings(private_broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    vin = random_vin()
    path = tmp_path / f"{vin}.toml"
    await provisioner.provision([CarRequest(vin, "vw_mqb", path)])
    first = read_car_config(path, vin=vin)
    with pytest.raises(ProvisioningError, match="provisioned already"):
        await provisioner.provision([CarRequest(vin, "vw_mqb", path)])
    assert read_car_config(path, vin=vin).password == first.password  # untouched
    await provisioner.provision([CarRequest(vin, "vw_mqb", path)], replace=True)
    second = read_car_config(path, vin=vin)
    assert second.password != first.password
    assert second.trusted_keys != first.trusted_keys  # a new key pair too
    assert can_log_in(private_broker, vin, second.password)
    assert not can_log_in(private_broker, vin, first.password)


@pytest.mark.parametrize(
    ("vin", "model", "message"),
    [
        ("WBA12345678901234", "BMW E8x!", "profile name"),
        ("WBAI2345678901234", "bmw_e8x", "WBAI2345678901234"),
        ("SHORT", "bmw_e8x", "SHORT"),
    ],
)
async def test_provisioning_refuses_bad_input_before_writing_anything(  # noqa: PLR0917  # fixtures + parameters
    private_broker: MosquittoBroker,
    migrated_database: str,
    tmp_path: Path,
    vin: str,
    model: str,
    message: str,
) -> None:
    settings = provisioning_settings(private_broker, migrated_database, tmp_path / "keys")
    before = private_broker.password_file.read_bytes()
    with pytest.raises(ProvisioningError, match=message):
        await Provisioner(settings, actor="t").provision(
            [CarRequest(vin, model, tmp_path / "c.toml")]
        )
    assert not (tmp_path / "c.toml").exists()
    assert private_broker.password_file.read_bytes() == before


async def test_provisioning_keeps_other_cars_and_the_gateway_connected(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    first = random_vin()
    await provisioner.provision([CarRequest(first, "tgw_generic", tmp_path / "first.toml")])
    with (
        MqttTestClient(broker.gateway_account) as gateway,
        MqttTestClient(car_account(tmp_path / "first.toml", first)) as car,
    ):
        gateway.subscribe(shared_subscription(TopicKind.EVENTS))
        others = [random_vin() for _ in range(3)]
        await provisioner.provision(
            [CarRequest(vin, "vw_mqb", tmp_path / f"{vin}.toml") for vin in others]
        )
        await provisioner.deprovision(others[0])
        # Both connections survived the reloads, and still carry messages.
        assert not gateway.disconnected
        assert not car.disconnected
        assert car.publish(vehicle_topic(first, TopicKind.EVENTS), b"still here").value == 0
        assert gateway.next_message().payload == b"still here"


async def test_deprovision_removes_everything_and_disconnects_the_car(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    vin = random_vin()
    path = tmp_path / f"{vin}.toml"
    await provisioner.provision([CarRequest(vin, "bmw_e8x", path)])
    account = car_account(path, vin)
    keys_dir = settings.commands.vehicle_keys_dir
    assert keys_dir is not None
    assert (keys_dir / f"{vin}.key").exists()
    with MqttTestClient(account) as car:
        result = await provisioner.deprovision(vin)
        # Mosquitto re-checks connected clients' passwords on reload: the car is out at once.
        wait_for(lambda: car.disconnected, "the deprovisioned car to be disconnected")
    assert result.had_password
    assert result.registration.deleted
    assert result.key_files_removed == 2
    assert not can_log_in(broker, vin, account.password)
    assert _roles(broker, vin) is None
    assert not (keys_dir / f"{vin}.key").exists()
    assert await vehicle_model(migrated_database, vin) is None
    assert await audit_actions(migrated_database, vin) == [
        "vehicle.provisioned",
        "vehicle.deprovisioned",
    ]
    with pytest.raises(ProvisioningError, match="not provisioned"):
        await provisioner.deprovision(vin)


async def test_rotation_never_locks_the_car_out(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    vin = random_vin()
    path = tmp_path / f"{vin}.toml"
    await provisioner.provision([CarRequest(vin, "bmw_e8x", path)])
    old = read_car_config(path, vin=vin)
    keys_dir = settings.commands.vehicle_keys_dir
    assert keys_dir is not None
    signer = CommandSigner(
        load_signing_key(settings.commands.signing_key_file),  # type: ignore[arg-type]
        keys_dir,
    )
    old_key_id = signer.key_for(vin).key_id

    # Step 1: staged. The broker still takes only the old password; the car's new file holds
    # both (new first), and trusts both keys; the gateway still signs with the old key.
    await provisioner.rotate(vin, path)
    staged = read_car_config(path, vin=vin)
    assert staged.password_fallback == old.password
    assert staged.password != old.password
    assert old_key_id in staged.trusted_keys
    assert len(staged.trusted_keys) == 2
    assert signer.key_for(vin).key_id == old_key_id
    assert can_log_in(broker, vin, old.password)
    assert not can_log_in(broker, vin, staged.password)

    with MqttTestClient(car_account(path, vin), password=old.password) as connected:
        # Step 2: finished. The old-password connection is closed by the reload; the new
        # password works from that moment, the old one no longer, and the new key signs.
        result = await provisioner.finish_rotation(vin, path)
        wait_for(lambda: connected.disconnected, "the old-password connection to close")
    assert result.reload is not None
    assert result.reload.confirmed
    final = read_car_config(path, vin=vin)
    assert final.password == staged.password
    assert final.password_fallback is None
    new_key_id = signer.key_for(vin).key_id
    assert new_key_id != old_key_id
    assert set(final.trusted_keys) == {new_key_id}
    assert can_log_in(broker, vin, final.password)
    assert not can_log_in(broker, vin, old.password)
    assert await audit_actions(migrated_database, vin) == [
        "vehicle.provisioned",
        "vehicle.rotation_staged",
        "vehicle.credentials_rotated",
    ]


async def test_rotation_needs_the_cars_current_configuration(
    private_broker: MosquittoBroker, migrated_database: str, tmp_path: Path
) -> None:
    settings = provisioning_settings(private_broker, migrated_database, tmp_path / "keys")
    provisioner = Provisioner(settings, actor="test")
    car_a, car_b = random_vin(), random_vin()
    await provisioner.provision(
        [
            CarRequest(car_a, "bmw_e8x", tmp_path / "a.toml"),
            CarRequest(car_b, "bmw_e8x", tmp_path / "b.toml"),
        ]
    )
    with pytest.raises(ProvisioningError, match=f"not the configuration of {car_a}"):
        await provisioner.rotate(car_a, tmp_path / "b.toml")
    with pytest.raises(ProvisioningError, match="no staged rotation"):
        await provisioner.finish_rotation(car_a, tmp_path / "a.toml")


def test_cli_bulk_provisioning_from_csv(
    private_broker: MosquittoBroker,
    migrated_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tgw provision --csv`: one reload for all, a progress bar, and every car can connect."""
    broker = private_broker
    settings = provisioning_settings(broker, migrated_database, tmp_path / "keys")
    _settings_to_env(settings, monkeypatch)
    vins = [random_vin() for _ in range(40)]
    models = ["bmw_e8x", "vw_mqb", "tgw_generic", "tgw_generic_ev"]
    csv_file = tmp_path / "cars.csv"
    csv_file.write_text(
        "vin,model\n# a comment\n"
        + "".join(f"{vin},{models[i % 4]}\n" for i, vin in enumerate(vins))
    )
    out = tmp_path / "configs"
    result = CliRunner().invoke(tgw, ["provision", "--csv", str(csv_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "provisioned 40 car(s)" in result.output
    assert sorted(p.stem for p in out.glob("*.toml")) == sorted(vins)
    for vin in (vins[0], vins[-1]):
        assert can_log_in(broker, vin, read_car_config(out / f"{vin}.toml", vin=vin).password)
        assert _roles(broker, vin) == (CAR_ROLE,)

    # deprovision and rotate through the CLI too
    target = vins[1]
    config = out / f"{target}.toml"
    staged = CliRunner().invoke(tgw, ["rotate", target, "--config", str(config)])
    assert staged.exit_code == 0, staged.output
    assert "--finish" in staged.output
    done = CliRunner().invoke(tgw, ["rotate", target, "--config", str(config), "--finish"])
    assert done.exit_code == 0, done.output
    gone = CliRunner().invoke(tgw, ["deprovision", target, "--yes"])
    assert gone.exit_code == 0, gone.output
    assert "registration deleted" in gone.output


def test_cli_explains_mistakes_without_a_traceback(
    private_broker: MosquittoBroker,
    migrated_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = provisioning_settings(private_broker, migrated_database, tmp_path / "keys")
    _settings_to_env(settings, monkeypatch)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("vin,model\nWBA12345678901234\n")
    cases = [
        (["provision", random_vin(), "--out", str(tmp_path / "x.toml")], "--model is required"),
        (["provision", "--csv", str(bad_csv), "--out", str(tmp_path)], "expected 'vin,model'"),
        (["deprovision", random_vin(), "--yes"], "is not provisioned"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(tgw, args)
        assert result.exit_code != 0
        assert isinstance(result.exception, ProvisioningError | SystemExit), result.exception
        assert message in str(result.exception), (args, result.exception)


def _settings_to_env(settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI builds Settings from TGW_* variables: export these settings there."""
    from gateway.config import Settings  # noqa: PLC0415

    assert isinstance(settings, Settings)
    values = {
        "MQTT__HOST": settings.mqtt.host,
        "MQTT__PORT": str(settings.mqtt.port),
        "DATABASE__DSN": settings.database.dsn.get_secret_value(),
        "COMMANDS__SIGNING_KEY_FILE": str(settings.commands.signing_key_file),
        "COMMANDS__SIGNING_KEY_ID": str(settings.commands.signing_key_id),
        "COMMANDS__VEHICLE_KEYS_DIR": str(settings.commands.vehicle_keys_dir),
        "BROKER__PASSWORD_FILE": str(settings.broker.password_file),
        "BROKER__PID_FILE": str(settings.broker.pid_file),
        "BROKER__ADMIN_PASSWORD": settings.broker.admin_password.get_secret_value()
        if settings.broker.admin_password
        else "",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"TGW_{name}", value)
    monkeypatch.delenv("TGW_CONFIG", raising=False)
