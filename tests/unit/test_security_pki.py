"""The CA (`tgw pki`), the broker templates' security parts, and the car's configuration file."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from gateway.cli import app as tgw
from gateway.devstack.mosquitto import render_tls_listener
from gateway.errors import DevStackError
from gateway.pki import CertificateAuthority, PkiError, init_pki
from gateway.provisioning.carconfig import CarConfig, read_car_config, write_car_config

REPO = Path(__file__).resolve().parents[2]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_init_makes_a_ca_and_a_server_certificate_for_the_names_given(tmp_path: Path) -> None:
    files = init_pki(tmp_path, server_names=["broker.example", "10.0.0.5"])
    ca, server = _cert(files.ca_cert), _cert(files.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_ca_with_an_open_key_file_is_refused(tmp_path: Path) -> None:
    files = init_pki(tmp_path)
    files.ca_key.chmod(0o644)
    with pytest.raises(PkiError, match="chmod 600"):
        CertificateAuthority.load(files.ca_cert, files.ca_key)


def test_cli_issues_client_and_server_certificates(tmp_path: Path) -> None:
    runner = CliRunner()
    init = runner.invoke(tgw, ["pki", "init", "--out", str(tmp_path / "pki")])
    assert init.exit_code == 0, init.output
    assert "TGW_BROKER__CA_KEY_FILE" in init.output
    ca = ["--ca-cert", str(tmp_path / "pki/ca.crt"), "--ca-key", str(tmp_path / "pki/ca.key")]
    vin = "WBAUF11080E123456"
    client = runner.invoke(tgw, ["pki", "issue", vin, "--out", str(tmp_path / "c"), *ca])
    assert client.exit_code == 0, client.output
    cert = _cert(tmp_path / "c" / f"{vin}.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == vin
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    renewed = runner.invoke(
        tgw,
        [
            "pki",
            "issue",
            "broker",
            "--out",
            str(tmp_path / "s"),
            "--server-name",
            "mq.example",
            *ca,
        ],
    )
    assert renewed.exit_code == 0, renewed.output
    server = _cert(tmp_path / "s" / "broker.crt")
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mq.example"]
    bad = runner.invoke(tgw, ["pki", "issue", "a/b", "--out", str(tmp_path), *ca])
    assert isinstance(bad.exception, PkiError)


def test_tls_block_of_the_template_renders_as_a_listener() -> None:
    template = (REPO / "mosquitto.conf").read_text()
    rendered = render_tls_listener(
        template,
        {"listener": "8884 127.0.0.1", "cafile": "/x/ca.crt", "require_certificate": "true"},
    )
    block = rendered.split("# tgw-render: tls-listener begin", 1)[1].split("# tgw-render:", 1)[0]
    settings = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert settings[:3] == [
        "listener 8884 127.0.0.1",
        "use_username_as_clientid true",
        "cafile /x/ca.crt",
    ]
    assert "require_certificate true" in settings
    assert "tls_version tlsv1.2" in settings
    with pytest.raises(DevStackError, match="lacks settings"):
        render_tls_listener(template, {"no_such_setting": "1"})
    # Unrendered, the block stays commented out: production enables it by hand.
    assert "\n#listener 8883\n" in template


def test_dynamic_security_template_lets_cars_subscribe_to_commands_only() -> None:
    document = json.loads((REPO / "mosquitto-dynsec.json").read_text())
    assert set(document["defaultACLAccess"].values()) == {False}  # defer to the acl_file
    roles = {role["rolename"]: role["acls"] for role in document["roles"]}
    car = sorted(roles["tgw-car"], key=lambda acl: -acl["priority"])
    assert [(a["acltype"], a["topic"], a["allow"]) for a in car] == [
        ("subscribePattern", "tgw/v1/vehicles/+/commands", True),
        ("subscribePattern", "#", False),
    ]
    probes = {c["username"]: c for c in document["clients"]}
    for probe in ("tgw-provision-probe", "tgw-devstack-probe"):
        assert "password" not in probes[probe]  # the password file authenticates them
        assert probes[probe]["roles"] == [{"rolename": "tgw-no-subscriptions"}]
    acl = (REPO / "mosquitto.acl").read_text()
    admin = acl.split("user tgw-provisioner\n", 1)[1].strip().splitlines()
    assert admin == [
        "topic write $CONTROL/dynamic-security/v1",
        "topic read $CONTROL/dynamic-security/v1/response",
    ]


def test_car_configuration_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "car.toml"
    config = CarConfig(
        vin="WBAUF11080E123456",
        model="bmw_e8x",
        host="mq.example",
        port=8883,
        password='pa"ss\\word\n',
        trusted_keys={"WBAUF11080E123456-0a1b2c3d": "ab" * 32},
        password_fallback="old",
        tls_ca_file=tmp_path / "ca.crt",
    )
    write_car_config(path, config, note="test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = tomllib.loads(path.read_text())
    assert document["mqtt"]["password"] == 'pa"ss\\word\n'
    assert document["commands"]["trusted_keys"] == {"WBAUF11080E123456-0a1b2c3d": "ab" * 32}
    again = read_car_config(path, vin=config.vin)
    assert again == config
    assert "password" not in repr(again)  # passwords stay out of reprs (and logs)
