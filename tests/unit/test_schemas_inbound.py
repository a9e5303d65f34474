"""decode_uplink: total over any topic and any bytes, and each rejection for its own reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    Accepted,
    CommandResultMessage,
    InboundLimits,
    Rejected,
    RejectionReason,
    StatusMessage,
    TelemetryMessage,
    TopicKind,
    decode_uplink,
    vehicle_topic,
)
from schemas.events import IgnitionEvent
from schemas.limits import (
    MAX_FUTURE_SKEW_MS,
    MAX_PAST_AGE_MS,
    MAX_PAYLOAD_BYTES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
)

pytestmark = pytest.mark.unit

NOW = 1_748_851_200_000  # 2025-06-02T08:00:00Z
VIN = "WBAUF11080E123456"
OTHER_VIN = "WBA3A5C51CF256985"
VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
vins = st.text(VIN_ALPHABET, min_size=17, max_size=17)
kinds = st.sampled_from(list(TopicKind))
UPLINK = [kind for kind in TopicKind if kind is not TopicKind.COMMANDS]


def telemetry(ts: int = NOW - 1000, **changes: Any) -> dict[str, Any]:
    sample = {"seq": 3, "ts": ts, "signals": {"speed": 12.5, "locked": True}}
    return {"v": 1, "vin": VIN, "boot_id": "b00t", "samples": [sample]} | changes


def event(ts: int = NOW - 1000, **changes: Any) -> dict[str, Any]:
    base = {"v": 1, "vin": VIN, "boot_id": "b00t", "seq": 4, "ts": ts, "type": "ignition_on"}
    return base | changes


def status(ts: int = NOW - 1000, **changes: Any) -> dict[str, Any]:
    base = {"v": 1, "vin": VIN, "online": False, "reason": "connection_lost", "ts": ts}
    return base | changes


def result(ts: int = NOW - 1000, **changes: Any) -> dict[str, Any]:
    base = {
        "v": 1,
        "command_id": "0d9f6c4e-2b71-4f3a-9a8e-5c1b7d2e4f60",
        "vin": VIN,
        "ts": ts,
        "outcome": "accepted",
    }
    return base | changes


VALID = {
    TopicKind.TELEMETRY: telemetry,
    TopicKind.EVENTS: event,
    TopicKind.STATUS: status,
    TopicKind.COMMAND_RESULTS: result,
}


def decode(
    kind: TopicKind,
    document: object,
    *,
    vin: str = VIN,
    now: int = NOW,
    limits: InboundLimits | None = None,
) -> Accepted | Rejected:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    topic = vehicle_topic(vin, kind)
    return decode_uplink(topic, payload, received_at_ms=now, limits=limits or InboundLimits())


def rejected(outcome: Accepted | Rejected, reason: RejectionReason) -> Rejected:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason is reason, outcome
    return outcome


# --------------------------------------------------------------------------------------------
# Totality: never an exception, always Accepted or Rejected
# --------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _check_total(topic: str, payload: bytes) -> Accepted | Rejected:
    outcome = decode_uplink(topic, payload, received_at_ms=NOW)
    assert isinstance(outcome, Accepted | Rejected)
    if isinstance(outcome, Rejected):
        assert outcome.topic == topic
        assert outcome.detail
    return outcome


@settings(max_examples=200)
@given(
    topic=st.text(max_size=80) | kinds.map(lambda kind: vehicle_topic(VIN, kind)),
    payload=st.binary(max_size=512),
)
def test_any_bytes_on_any_topic_are_accepted_or_rejected(topic: str, payload: bytes) -> None:
    _check_total(topic, payload)


@settings(max_examples=200)
@given(kind=kinds, document=json_values)
def test_any_json_on_every_topic_is_accepted_or_rejected(kind: TopicKind, document: object) -> None:
    outcome = _check_total(vehicle_topic(VIN, kind), json.dumps(document).encode())
    if kind is TopicKind.COMMANDS:
        assert rejected(outcome, RejectionReason.UNKNOWN_TOPIC).vin == VIN


def _mutants(kind: TopicKind) -> st.SearchStrategy[dict[str, Any]]:
    document = VALID[kind]()
    keys = sorted(document)
    replace = st.tuples(st.sampled_from(keys), json_values).map(
        lambda kv: document | {kv[0]: kv[1]}
    )
    delete = st.sampled_from(keys).map(lambda key: {k: v for k, v in document.items() if k != key})
    add = st.tuples(st.text(max_size=10), json_values).map(lambda kv: {kv[0]: kv[1]} | document)
    return replace | delete | add


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_near_valid_messages_are_accepted_or_rejected_for_a_payload_reason(
    data: st.DataObject,
) -> None:
    kind = data.draw(st.sampled_from(UPLINK))
    mutant = data.draw(_mutants(kind))
    outcome = _check_total(vehicle_topic(VIN, kind), json.dumps(mutant).encode())
    if isinstance(outcome, Rejected):
        assert outcome.vin == VIN
        assert outcome.reason in {
            RejectionReason.SCHEMA_VIOLATION,
            RejectionReason.UNKNOWN_VERSION,
            RejectionReason.VIN_MISMATCH,
            RejectionReason.CLOCK_SKEW,
        }


@given(vin=vins, kind=st.sampled_from(UPLINK))
def test_a_valid_message_is_accepted_with_its_model(vin: str, kind: TopicKind) -> None:
    outcome = decode(kind, VALID[kind](vin=vin), vin=vin)
    assert isinstance(outcome, Accepted), outcome
    assert outcome.topic.vin == vin == outcome.message.vin
    assert outcome.topic.kind is kind


def test_each_kind_decodes_to_its_model() -> None:
    models = {
        TopicKind.TELEMETRY: TelemetryMessage,
        TopicKind.EVENTS: IgnitionEvent,
        TopicKind.STATUS: StatusMessage,
        TopicKind.COMMAND_RESULTS: CommandResultMessage,
    }
    for kind, model in models.items():
        outcome = decode(kind, VALID[kind]())
        assert isinstance(outcome, Accepted)
        assert type(outcome.message) is model


# --------------------------------------------------------------------------------------------
# Topic
# --------------------------------------------------------------------------------------------


def test_a_car_publishing_on_its_commands_topic_is_a_downlink_topic() -> None:
    outcome = rejected(decode(TopicKind.COMMANDS, telemetry()), RejectionReason.UNKNOWN_TOPIC)
    assert "downlink" in outcome.detail
    assert outcome.vin == VIN


@pytest.mark.parametrize(
    "topic",
    [
        "tgw/v1/vehicles/wbauf11080e123456/telemetry",
        "tgw/v1/vehicles/WBAUF11080E123456/gps",
        "tgw/v2/vehicles/WBAUF11080E123456/telemetry",
        "tgw/v1/vehicles/WBAUF11080E123456/telemetry/extra",
    ],
)
def test_a_topic_outside_the_namespace_has_no_vin(topic: str) -> None:
    outcome = decode_uplink(topic, json.dumps(telemetry()).encode(), received_at_ms=NOW)
    assert rejected(outcome, RejectionReason.UNKNOWN_TOPIC).vin is None


# --------------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    payload = json.dumps(telemetry()).encode()
    return payload + b" " * (size - len(payload))  # trailing JSON whitespace keeps it valid


def test_a_payload_of_exactly_the_limit_is_accepted() -> None:
    assert isinstance(decode(TopicKind.TELEMETRY, _padded(MAX_PAYLOAD_BYTES)), Accepted)


def test_one_byte_over_the_limit_is_oversized() -> None:
    outcome = rejected(
        decode(TopicKind.TELEMETRY, _padded(MAX_PAYLOAD_BYTES + 1)), RejectionReason.OVERSIZED
    )
    assert f"{MAX_PAYLOAD_BYTES + 1} bytes" in outcome.detail


def test_size_is_checked_before_json() -> None:
    rejected(decode(TopicKind.EVENTS, b"\xff" * (MAX_PAYLOAD_BYTES + 1)), RejectionReason.OVERSIZED)


@given(limit=st.integers(50, 400))
def test_a_deployment_limit_is_honoured(limit: int) -> None:
    payload = json.dumps(telemetry()).encode()
    outcome = decode(TopicKind.TELEMETRY, payload, limits=InboundLimits(max_payload_bytes=limit))
    assert isinstance(outcome, Accepted) == (len(payload) <= limit), outcome


# --------------------------------------------------------------------------------------------
# JSON and version
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b" ",
        b"\xff\xfe",
        b'{"v": 1, "vin": "WBAUF11080E123456"',
        b"\xef\xbb\xbf" + json.dumps(telemetry()).encode(),  # byte-order mark
        json.dumps(telemetry()).encode("utf-16"),
        b'{"v": 1} trailing',
        b"nan",
        b"[" * 300 + b"]" * 300,
    ],
)
def test_payloads_that_are_not_json(payload: bytes) -> None:
    outcome = rejected(decode(TopicKind.TELEMETRY, payload), RejectionReason.NOT_JSON)
    assert outcome.detail.startswith("payload is not valid UTF-8 JSON")


@given(st.binary(min_size=1).filter(lambda b: not _is_utf8(b)))
def test_invalid_utf8_is_never_accepted(payload: bytes) -> None:
    outcome = decode(TopicKind.STATUS, b'{"v": 1, "firmware": "' + payload + b'"}')
    assert isinstance(outcome, Rejected)
    assert outcome.reason in {RejectionReason.NOT_JSON, RejectionReason.SCHEMA_VIOLATION}


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("kind", UPLINK)
@pytest.mark.parametrize(
    ("version", "shown"),
    [(2, "2"), (0, "0"), ("1", '"1"'), (True, "true"), (None, "null"), (1.5, "1.5"), ([1], "[1]")],
)
def test_any_version_but_1_is_unknown(kind: TopicKind, version: object, shown: str) -> None:
    outcome = rejected(decode(kind, VALID[kind](v=version)), RejectionReason.UNKNOWN_VERSION)
    assert f"protocol version {shown} is not supported" in outcome.detail


@pytest.mark.parametrize("kind", UPLINK)
def test_a_missing_version_is_unknown(kind: TopicKind) -> None:
    document = {k: v for k, v in VALID[kind]().items() if k != "v"}
    outcome = rejected(decode(kind, document), RejectionReason.UNKNOWN_VERSION)
    assert "field v is missing" in outcome.detail


def test_the_version_is_judged_before_the_schema() -> None:
    # A v2 event of a type v1 does not know is a version problem, not a schema violation.
    future = event(v=2, type="tyre_pressure_low", pressure_kpa=180)
    rejected(decode(TopicKind.EVENTS, future), RejectionReason.UNKNOWN_VERSION)
    rejected(decode(TopicKind.TELEMETRY, {"v": 2}), RejectionReason.UNKNOWN_VERSION)


def test_version_1_written_as_a_float_is_accepted() -> None:
    # JSON does not tell 1 from 1.0, and neither do the JSON Schemas (const 1).
    assert isinstance(decode(TopicKind.TELEMETRY, telemetry(v=1.0)), Accepted)


@pytest.mark.parametrize("document", [None, [], "text", 1, [telemetry()]])
def test_json_that_is_not_an_object_is_a_schema_violation(document: object) -> None:
    outcome = rejected(decode(TopicKind.TELEMETRY, document), RejectionReason.SCHEMA_VIOLATION)
    assert outcome.detail.startswith("(message): ")


# --------------------------------------------------------------------------------------------
# Schema violations name the field
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "document", "path"),
    [
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {"speed": 401}}]),
            "samples.0.signals.speed",
        ),
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {"speed": "12"}}]),
            "samples.0.signals.speed",
        ),
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {"locked": 1}}]),
            "samples.0.signals.locked",
        ),
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1.0, "ts": NOW, "signals": {"speed": 1}}]),
            "samples.0.seq",
        ),
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {"fuel_level": 3}}]),
            "samples.0.signals.fuel_level",
        ),
        (
            TopicKind.TELEMETRY,
            telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {}}]),
            "samples.0.signals",
        ),
        (TopicKind.TELEMETRY, telemetry(samples=[]), "samples"),
        (TopicKind.TELEMETRY, telemetry(boot_id="has space"), "boot_id"),
        (TopicKind.TELEMETRY, telemetry(vin="WBAUF11080E12345"), "vin"),
        (TopicKind.TELEMETRY, telemetry(extra=1), "extra"),
        (TopicKind.EVENTS, event(type="door_opened"), "door_opened.door"),
        (TopicKind.EVENTS, event(type="low_fuel", level_pct=101), "low_fuel.level_pct"),
        (
            TopicKind.EVENTS,
            event(type="signal_out_of_range", signal="a\nb", value=1),
            "signal_out_of_range.signal",
        ),
        (TopicKind.STATUS, status(online=True), "(message)"),
        (TopicKind.STATUS, status(firmware="x\x00"), "firmware"),
        (TopicKind.COMMAND_RESULTS, result(outcome="rejected"), "(message)"),
        (TopicKind.COMMAND_RESULTS, result(command_id="not-a-uuid"), "command_id"),
    ],
)
def test_a_schema_violation_names_the_field(
    kind: TopicKind, document: dict[str, Any], path: str
) -> None:
    outcome = rejected(decode(kind, document), RejectionReason.SCHEMA_VIOLATION)
    assert outcome.detail.startswith(f"{path}: "), outcome.detail


def test_an_invalid_only_sample_is_not_reported_as_an_empty_batch() -> None:
    document = telemetry(samples=[{"seq": 1, "ts": NOW, "signals": {"speed": 401}}])
    outcome = rejected(decode(TopicKind.TELEMETRY, document), RejectionReason.SCHEMA_VIOLATION)
    assert "at least 1 item" not in outcome.detail


def test_many_violations_are_summarised() -> None:
    document = telemetry(boot_id="", vin="x", samples="none", extra=1, more=2)
    outcome = rejected(decode(TopicKind.TELEMETRY, document), RejectionReason.SCHEMA_VIOLATION)
    assert outcome.detail.count("; ") == 3
    assert outcome.detail.endswith("more")


# --------------------------------------------------------------------------------------------
# VIN and clock
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", UPLINK)
def test_a_payload_naming_another_vin_is_a_mismatch(kind: TopicKind) -> None:
    outcome = rejected(decode(kind, VALID[kind](vin=OTHER_VIN)), RejectionReason.VIN_MISMATCH)
    assert OTHER_VIN in outcome.detail
    assert VIN in outcome.detail
    assert outcome.vin == VIN


@given(a=vins, b=vins)
def test_vin_mismatch_for_any_two_vins(a: str, b: str) -> None:
    outcome = decode(TopicKind.EVENTS, event(vin=b), vin=a)
    assert isinstance(outcome, Accepted) == (a == b)


@pytest.mark.parametrize("kind", [TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.COMMAND_RESULTS])
@given(offset=st.integers(-2 * MAX_PAST_AGE_MS, 2 * MAX_FUTURE_SKEW_MS))
def test_clock_skew_window(kind: TopicKind, offset: int) -> None:
    outcome = decode(kind, VALID[kind](ts=NOW + offset))
    inside = -MAX_PAST_AGE_MS <= offset <= MAX_FUTURE_SKEW_MS
    if inside:
        assert isinstance(outcome, Accepted), outcome
    else:
        rejected(outcome, RejectionReason.CLOCK_SKEW)


@pytest.mark.parametrize("kind", [TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.COMMAND_RESULTS])
def test_clock_skew_edges(kind: TopicKind) -> None:
    assert isinstance(decode(kind, VALID[kind](ts=NOW + MAX_FUTURE_SKEW_MS)), Accepted)
    assert isinstance(decode(kind, VALID[kind](ts=NOW - MAX_PAST_AGE_MS)), Accepted)
    future = rejected(
        decode(kind, VALID[kind](ts=NOW + MAX_FUTURE_SKEW_MS + 1)), RejectionReason.CLOCK_SKEW
    )
    assert "ahead of the gateway's clock" in future.detail
    past = rejected(
        decode(kind, VALID[kind](ts=NOW - MAX_PAST_AGE_MS - 1)), RejectionReason.CLOCK_SKEW
    )
    assert "old" in past.detail


def test_one_old_sample_refuses_the_whole_batch() -> None:
    samples = [
        {"seq": 1, "ts": NOW - MAX_PAST_AGE_MS - 1, "signals": {"speed": 1}},
        {"seq": 2, "ts": NOW, "signals": {"speed": 1}},
    ]
    rejected(decode(TopicKind.TELEMETRY, telemetry(samples=samples)), RejectionReason.CLOCK_SKEW)


def test_a_status_may_be_old_but_not_in_the_future() -> None:
    # The last will carries the connect time, which may be weeks ago.
    assert isinstance(decode(TopicKind.STATUS, status(ts=MIN_TIMESTAMP_MS)), Accepted)
    future = status(ts=NOW + MAX_FUTURE_SKEW_MS + 1)
    rejected(decode(TopicKind.STATUS, future), RejectionReason.CLOCK_SKEW)


def test_timestamps_outside_the_protocol_range_are_schema_violations() -> None:
    far_now = MAX_TIMESTAMP_MS
    before = decode(TopicKind.STATUS, status(ts=MIN_TIMESTAMP_MS - 1))
    after = decode(TopicKind.EVENTS, event(ts=MAX_TIMESTAMP_MS + 1), now=far_now)
    assert rejected(before, RejectionReason.SCHEMA_VIOLATION).detail.startswith("ts: ")
    assert rejected(after, RejectionReason.SCHEMA_VIOLATION).detail.startswith("ignition_on.ts: ")


def test_deployment_clock_tolerances_are_honoured() -> None:
    strict = InboundLimits(max_future_skew_ms=1000, max_past_age_ms=60_000)
    assert isinstance(decode(TopicKind.EVENTS, event(ts=NOW + 1000), limits=strict), Accepted)
    rejected(
        decode(TopicKind.EVENTS, event(ts=NOW + 1001), limits=strict), RejectionReason.CLOCK_SKEW
    )
    rejected(
        decode(TopicKind.EVENTS, event(ts=NOW - 60_001), limits=strict), RejectionReason.CLOCK_SKEW
    )


def test_the_check_order_is_topic_size_json_version_schema_vin_clock() -> None:
    # Each payload is wrong in two ways; the earlier check wins.
    bad_topic = decode_uplink("tgw/v1/vehicles/x/telemetry", b"\xff" * 70_000, received_at_ms=NOW)
    assert rejected(bad_topic, RejectionReason.UNKNOWN_TOPIC)
    rejected(decode(TopicKind.TELEMETRY, b"\xff" * 70_000), RejectionReason.OVERSIZED)
    rejected(decode(TopicKind.TELEMETRY, b'{"v": 2,'), RejectionReason.NOT_JSON)
    rejected(
        decode(TopicKind.TELEMETRY, telemetry(v=2, samples=[])), RejectionReason.UNKNOWN_VERSION
    )
    other_vin_bad_schema = telemetry(vin=OTHER_VIN, samples=[])
    rejected(decode(TopicKind.TELEMETRY, other_vin_bad_schema), RejectionReason.SCHEMA_VIOLATION)
    rejected(
        decode(TopicKind.TELEMETRY, telemetry(vin=OTHER_VIN, ts=NOW + 10**9)),
        RejectionReason.VIN_MISMATCH,
    )


def test_unknown_vehicle_is_not_decode_uplinks_business() -> None:
    # Registration is the gateway's check, after decoding; decode_uplink never says it.
    assert RejectionReason.UNKNOWN_VEHICLE.value == "unknown_vehicle"
    assert isinstance(
        decode(TopicKind.TELEMETRY, telemetry(vin=OTHER_VIN), vin=OTHER_VIN), Accepted
    )


def test_limits_default_to_the_protocol_constants() -> None:
    limits = InboundLimits()
    assert limits.max_payload_bytes == MAX_PAYLOAD_BYTES
    assert limits.max_future_skew_ms == MAX_FUTURE_SKEW_MS
    assert limits.max_past_age_ms == MAX_PAST_AGE_MS
