"""Rendering the repository's broker templates, and Mosquitto's password hash format."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.devstack import mosquitto_password_hash
from gateway.devstack.mosquitto import render_acl, render_config
from gateway.errors import DevStackError

REPO = Path(__file__).resolve().parents[2]
VALUES = {
    "password_file": "password_file /w/passwd",
    "acl_file": "acl_file /w/acl",
    "user": "user nobody",
    "persistence_location": "persistence_location /w/data",
    "log_dest": "log_dest stderr",
    "listener": "listener 4242 127.0.0.1",
    "plugin": "plugin /w/mosquitto_dynamic_security.so",
    "plugin_opt_config_file": "plugin_opt_config_file /w/dynsec.json",
}


def _settings(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line and not line.startswith("#")]


def test_repository_config_renders_only_the_marked_lines() -> None:
    template = (REPO / "mosquitto.conf").read_text()
    rendered = render_config(template, VALUES)
    before, after = _settings(template), _settings(rendered)
    assert len(before) == len(after)
    changed = {(b, a) for b, a in zip(before, after, strict=True) if b != a}
    assert {a for _, a in changed} == set(VALUES.values())
    # The security settings are the template's own, verbatim.
    for line in ("allow_anonymous false", "per_listener_settings false", "persistence true"):
        assert line in after
    assert "use_username_as_clientid true" in after


def test_render_refuses_a_template_without_a_marker() -> None:
    template = (REPO / "mosquitto.conf").read_text().replace("# tgw-render: acl_file\n", "")
    with pytest.raises(DevStackError, match="acl_file"):
        render_config(template, VALUES)


def test_render_refuses_a_duplicated_marker() -> None:
    template = "# tgw-render: user\nuser a\n# tgw-render: user\nuser b\n"
    with pytest.raises(DevStackError, match="twice"):
        render_config(template, {"user": "user x"})


def test_acl_repeats_the_gateway_block_per_account() -> None:
    template = (REPO / "mosquitto.acl").read_text()
    assert render_acl(template, ["tgw-gateway"]) == template
    rendered = render_acl(template, ["gw-a", "gw-b"])
    assert "user tgw-gateway\n" not in rendered
    for user in ("gw-a", "gw-b"):
        block = rendered.split(f"user {user}\n", 1)[1].split("\n#", 1)[0]
        assert "topic write tgw/v1/vehicles/+/commands" in block
    assert rendered.count("pattern read tgw/v1/vehicles/%u/commands") == 1


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "a/b", "a+b", "a#b"])
def test_acl_refuses_unsafe_usernames(bad: str) -> None:
    with pytest.raises(DevStackError):
        render_acl((REPO / "mosquitto.acl").read_text(), [bad])


def test_password_hash_matches_mosquitto_passwd() -> None:
    # Written by Mosquitto 2.0.11's `mosquitto_passwd -b passwd tgw-gateway gwpass`.
    golden = (
        "$7$101$n2Ki6QpYAi82gJGu$5Q9T3HNhPBzC6/8NM3X4m3ES43gsl6ariBa1GZEJfeMIb9yu5gVoL8p1LN2+"
        "yiIOUTqf0wm9RDSP4M/HwtBAGA=="
    )
    salt = base64.b64decode(golden.split("$")[3])
    assert mosquitto_password_hash("gwpass", salt=salt) == golden
    assert mosquitto_password_hash("gwpass") != mosquitto_password_hash("gwpass")  # fresh salt
