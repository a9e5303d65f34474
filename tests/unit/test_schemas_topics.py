"""The topic namespace tgw/v1/vehicles/{VIN}/{kind}: builders and the strict parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    GATEWAY_SHARE_GROUP,
    TOPIC_ROOT,
    TopicError,
    TopicKind,
    VehicleTopic,
    VinError,
    command_topic,
    parse_topic,
    shared_subscription,
    topic_filter,
    vehicle_topic,
)
from schemas.topics import UPLINK_KINDS, Direction

pytestmark = pytest.mark.unit

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
vins = st.text(VIN_ALPHABET, min_size=17, max_size=17)
kinds = st.sampled_from(list(TopicKind))


@given(vins, kinds)
def test_build_then_parse_round_trips(vin: str, kind: TopicKind) -> None:
    topic = vehicle_topic(vin, kind)
    assert topic == f"tgw/v1/vehicles/{vin}/{kind.value}"
    parsed = parse_topic(topic)
    assert parsed == VehicleTopic(vin=vin, kind=kind)
    assert str(parsed) == topic


@given(vins)
def test_command_topic_is_the_commands_kind(vin: str) -> None:
    assert command_topic(vin) == vehicle_topic(vin, TopicKind.COMMANDS)


@given(st.text())
def test_any_string_parses_or_raises_topic_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        message = str(exc)
    else:
        assert str(parsed) == topic
        return
    assert repr(topic) in message  # the error quotes the topic it refused


# Strings made of plausible topic levels reach deeper into the parser than random text.
_levels = st.sampled_from(
    ["tgw", "v1", "v2", "vehicles", "", "+", "#", "WBAUF11080E123456", "wbauf11080e123456"]
    + [kind.value for kind in TopicKind]
) | st.text(VIN_ALPHABET + "IOQ", min_size=15, max_size=19)


@given(st.lists(_levels, max_size=7).map("/".join))
def test_near_topics_parse_or_raise_topic_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return
    assert str(parsed) == topic


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("tgw/v1/vehicles/+/telemetry", "invalid VIN"),
        ("tgw/v1/vehicles/WBAUF11080E123456/#", "unknown kind '#'"),
        ("tgw/v1/vehicles/wbauf11080e123456/telemetry", "capital letters"),
        ("tgw/v1/vehicles/WBAUF11080E123456/telemetri", "unknown kind 'telemetri'"),
        ("tgw/v1/vehicles/WBAUF11080E123456/Telemetry", "unknown kind"),
        ("tgw/v2/vehicles/WBAUF11080E123456/telemetry", "not of the form"),
        ("/tgw/v1/vehicles/WBAUF11080E123456/telemetry", "not of the form"),
        ("tgw/v1/vehicles/WBAUF11080E123456/telemetry/", "not of the form"),
        ("tgw/v1/vehicles/WBAUF11080E123456/telemetry/extra", "not of the form"),
        ("tgw/v1/vehicles/WBAUF11080E123456", "not of the form"),
        ("$share/tgw-gateway/tgw/v1/vehicles/+/telemetry", "not of the form"),
        ("", "not of the form"),
    ],
)
def test_parse_topic_says_what_is_wrong(topic: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        parse_topic(topic)


def test_unknown_kind_error_lists_the_known_kinds() -> None:
    with pytest.raises(TopicError) as caught:
        parse_topic("tgw/v1/vehicles/WBAUF11080E123456/gps")
    for kind in TopicKind:
        assert kind.value in str(caught.value)


@given(st.text().filter(lambda s: len(s) != 17))
def test_building_a_topic_for_an_invalid_vin_raises_vin_error(vin: str) -> None:
    with pytest.raises(VinError):
        vehicle_topic(vin, TopicKind.TELEMETRY)


@pytest.mark.parametrize("kind", list(TopicKind))
def test_filters_and_shared_subscriptions(kind: TopicKind) -> None:
    assert topic_filter(kind) == f"{TOPIC_ROOT}/+/{kind.value}"
    assert shared_subscription(kind) == f"$share/{GATEWAY_SHARE_GROUP}/{TOPIC_ROOT}/+/{kind.value}"
    assert shared_subscription(kind, "other") == f"$share/other/{TOPIC_ROOT}/+/{kind.value}"


def test_only_commands_flow_to_the_car() -> None:
    downlink = {kind for kind in TopicKind if kind.direction is Direction.DOWNLINK}
    assert downlink == {TopicKind.COMMANDS}
    assert set(UPLINK_KINDS) == set(TopicKind) - downlink
