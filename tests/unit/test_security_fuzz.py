"""Fuzzing every parser that takes input from outside (hypothesis): nothing crashes.

Gateway side: uplink payloads (`decode_uplink`: oversized, deeply nested, wrong-typed,
truncated, bit-flipped), topics, the provisioning files a person or a tool hands us (a car's
configuration, the cars CSV, the broker's password file). Car side: signal profiles (TOML,
mutated), CAN frames through every shipped profile's DBC decoding, command payloads, signature
verification and the command gate.

Each property says what "not crashing" means for it: a total function, or only the documented
error type. Examples per property: TGW_FUZZ_EXAMPLES (default 300); the counts of inputs tried
are written to <basetemp>/fuzz-counts.json and printed (see them with -s).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from device_sim.codec import FrameDecoder
from device_sim.commands import CommandGate, UnreadableCommand, parse_command
from device_sim.errors import DeviceConfigurationError, DeviceError, ProfileError
from device_sim.profiles import BUILTIN_PROFILE_DIR, builtin_profile_names, load_profile
from device_sim.verifier import Ed25519Verifier, parse_trusted_keys
from gateway.cli.provision_cmd import read_cars_csv
from gateway.provisioning.carconfig import CarConfig, read_car_config, write_car_config
from gateway.provisioning.errors import ProvisioningError
from gateway.provisioning.passwords import AccountFiles, hash_password, password_matches
from schemas import (
    Accepted,
    CommandAction,
    CommandMessage,
    Rejected,
    RejectionReason,
    TopicKind,
    decode_uplink,
    vehicle_topic,
)
from schemas.limits import MAX_PAYLOAD_BYTES
from schemas.signals import Signals
from schemas.topics import TopicError, parse_topic
from tests.fuzzing import NOW, OTHER_VIN, VIN, dumps, json_values, mutated, valid_uplink

pytestmark = pytest.mark.unit

EXAMPLES = int(os.environ.get("TGW_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: Counter[str] = Counter()

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
UPLINK = [kind for kind in TopicKind if kind is not TopicKind.COMMANDS]


@pytest.fixture(scope="module", autouse=True)
def _report_counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    path = tmp_path_factory.getbasetemp() / "fuzz-counts.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    totals = Counter(previous) + COUNTS
    path.write_text(json.dumps(dict(sorted(totals.items())), indent=1))
    print(f"\nfuzz inputs tried: {sum(COUNTS.values())} {dict(sorted(COUNTS.items()))}")


def tried(name: str) -> None:
    COUNTS[name] += 1


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the whole module; each example writes a file of its own name."""
    return tmp_path_factory.mktemp("fuzz")


def _file(scratch: Path, suffix: str) -> Path:
    return scratch / f"{uuid.uuid4().hex}{suffix}"


def _check_uplink(topic: str, payload: bytes) -> Accepted | Rejected:
    outcome = decode_uplink(topic, payload, received_at_ms=NOW)
    assert isinstance(outcome, Accepted | Rejected)
    if isinstance(outcome, Rejected):
        assert outcome.reason in set(RejectionReason)
        assert outcome.detail
        assert len(outcome.detail) <= 1300  # bounded: 3 errors of 400 characters at most
        if len(payload) > MAX_PAYLOAD_BYTES:
            assert outcome.reason is RejectionReason.OVERSIZED
    else:
        message = outcome.message
        assert message.vin == outcome.topic.vin
        # What was accepted re-encodes and decodes to itself: storage sees a valid model.
        again = decode_uplink(
            topic, message.model_dump_json(exclude_none=True).encode(), received_at_ms=NOW
        )
        assert isinstance(again, Accepted)
    return outcome


# -- gateway: uplink payloads ----------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from(UPLINK), data=st.data())
def test_uplink_mutated_anywhere_is_accepted_or_dead_lettered(
    kind: TopicKind, data: st.DataObject
) -> None:
    tried("uplink.mutated")
    document = data.draw(mutated(valid_uplink(kind)))
    _check_uplink(vehicle_topic(VIN, kind), dumps(document))


@FUZZ
@given(kind=st.sampled_from(UPLINK), cut=st.integers(0, 10_000))
def test_uplink_truncated_is_never_accepted(kind: TopicKind, cut: int) -> None:
    tried("uplink.truncated")
    payload = dumps(valid_uplink(kind))
    cut %= len(payload)
    outcome = _check_uplink(vehicle_topic(VIN, kind), payload[:cut])
    assert isinstance(outcome, Rejected)
    assert outcome.reason in {RejectionReason.NOT_JSON, RejectionReason.SCHEMA_VIOLATION}


@FUZZ
@given(
    kind=st.sampled_from(UPLINK),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_uplink_with_flipped_bytes(kind: TopicKind, flips: list[tuple[int, int]]) -> None:
    tried("uplink.bitflip")
    payload = bytearray(dumps(valid_uplink(kind)))
    for position, mask in flips:
        payload[position % len(payload)] ^= mask
    _check_uplink(vehicle_topic(VIN, kind), bytes(payload))


@FUZZ
@given(
    kind=st.sampled_from(UPLINK),
    depth=st.integers(1, MAX_PAYLOAD_BYTES // 2),
    opener=st.sampled_from(
        [b"[", b'{"a":', b'{"samples":[', b'{"v":1,"vin":"' + VIN.encode() + b'","x":']
    ),
    closed=st.booleans(),
)
def test_uplink_deeply_nested_is_rejected(
    kind: TopicKind, depth: int, opener: bytes, closed: bool
) -> None:
    tried("uplink.nested")
    closer = b"]" if opener == b"[" else b"}"
    payload = opener * depth + (b"1" + closer * depth if closed else b"")
    outcome = _check_uplink(vehicle_topic(VIN, kind), payload)
    assert isinstance(outcome, Rejected)


@FUZZ
@given(
    kind=st.sampled_from(UPLINK),
    extra=st.integers(1, 3 * MAX_PAYLOAD_BYTES),
    filler=st.binary(min_size=1, max_size=8),
)
def test_uplink_oversized_is_rejected_before_parsing(
    kind: TopicKind, extra: int, filler: bytes
) -> None:
    tried("uplink.oversized")
    payload = (filler * (MAX_PAYLOAD_BYTES // len(filler) + 2))[: MAX_PAYLOAD_BYTES + extra]
    outcome = _check_uplink(vehicle_topic(VIN, kind), payload)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectionReason.OVERSIZED


@FUZZ
@given(kind=st.sampled_from(UPLINK), document=json_values)
def test_uplink_wrong_typed_whole_documents(kind: TopicKind, document: object) -> None:
    tried("uplink.wrong_typed")
    _check_uplink(vehicle_topic(VIN, kind), dumps(document))


# -- gateway: topics -------------------------------------------------------------------------------


@FUZZ
@given(
    topic=st.text(max_size=120)
    | st.builds(
        lambda vin, kind, junk: f"tgw/v1/vehicles/{vin}/{kind}{junk}",
        st.text(VIN_ALPHABET + "IOQ+#/ a", min_size=0, max_size=20),
        st.sampled_from([k.value for k in TopicKind] + ["", "+", "#", "telemetry/x"]),
        st.sampled_from(["", "/", "/x", "\u0000", " "]),
    )
)
def test_topic_parsing_is_total_and_round_trips(topic: str) -> None:
    tried("topic")
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        message = str(exc)
        assert message
        return
    assert vehicle_topic(parsed.vin, parsed.kind) == topic
    assert decode_uplink(topic, b"{}", received_at_ms=NOW) is not None


# -- gateway: what provisioning reads --------------------------------------------------------------

config_text = st.text(max_size=400) | st.builds(
    lambda head, body: head + body,
    st.sampled_from([f"# In-car unit configuration of {VIN} (bmw_e8x): x, now.\n", ""]),
    st.text(max_size=300),
)


@FUZZ
@given(text=config_text)
def test_car_configuration_reader_fails_only_with_its_error(text: str, scratch: Path) -> None:
    tried("provisioning.car_config")
    path = _file(scratch, ".toml")
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(ProvisioningError):
        read_car_config(path, vin=VIN)


@FUZZ
@given(
    password=st.text(min_size=1, max_size=60),
    keys=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=70), max_size=3),
)
def test_car_configuration_round_trips_any_strings(
    password: str, keys: dict[str, str], scratch: Path
) -> None:
    tried("provisioning.car_config_roundtrip")
    path = _file(scratch, ".toml")
    config = CarConfig(
        VIN, "bmw_e8x", "broker.example", 8883, password, keys, password_fallback=password[::-1]
    )
    texts = password + "".join(keys) + "".join(keys.values())
    try:
        write_car_config(path, config, note="fuzz")
    except ProvisioningError:
        # A lone surrogate has no UTF-8 form: refused, and nothing half-written.
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in texts)
        assert not path.exists()
        return
    again = read_car_config(path, vin=VIN)
    assert (again.password, again.password_fallback, dict(again.trusted_keys)) == (
        password,
        password[::-1],
        keys,
    )


@FUZZ
@given(
    text=st.text(max_size=300)
    | st.lists(
        st.tuples(st.text(VIN_ALPHABET + "io, ", max_size=20), st.text(max_size=12)), max_size=6
    ).map(lambda rows: "vin,model\n" + "\n".join(f"{a},{b}" for a, b in rows))
)
def test_cars_csv_reader_fails_only_with_its_error(text: str, scratch: Path) -> None:
    tried("provisioning.cars_csv")
    path = _file(scratch, ".csv")
    path.write_text(text, encoding="utf-8")
    try:
        rows = read_cars_csv(path)
    except ProvisioningError:
        return
    assert rows
    assert all(len(row) == 2 and all(row) for row in rows)


@FUZZ
@given(text=st.text(max_size=400))
def test_password_file_reader_never_keeps_a_line_without_a_hash(text: str, scratch: Path) -> None:
    tried("provisioning.password_file")
    path = _file(scratch, ".passwd")
    path.write_text(text, encoding="utf-8")
    entries = AccountFiles(path).read()
    for username, hashed in entries.accounts.items():
        assert ":" not in username
        assert hashed.strip()
    assert not password_matches("anything", "not a hash")


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, database=None)
@given(password=st.text(max_size=40), other=st.text(max_size=40))
def test_password_hash_matches_only_its_password(password: str, other: str) -> None:
    tried("provisioning.password_hash")
    hashed = hash_password(password)
    assert password_matches(password, hashed)
    assert password_matches(other, hashed) == (other == password)


# -- car: signal profiles --------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return json.dumps(key)


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(2**63) <= value < 2**63 else json.dumps(str(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return json.dumps(value if isinstance(value, str) else str(value))


def _toml_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        items = [v for v in (_toml_value(item) for item in value) if v is not None]
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        pairs = ((k, _toml_value(x)) for k, x in value.items())
        return "{" + ", ".join(f"{_toml_key(k)} = {v}" for k, v in pairs if v is not None) + "}"
    return _toml_scalar(value)


def to_toml(document: dict[str, Any]) -> str:
    """A small TOML writer for fuzzed documents (tables become inline tables)."""
    lines = []
    for key, value in document.items():
        rendered = _toml_value(value)
        if rendered is not None:
            lines.append(f"{_toml_key(key)} = {rendered}")
    return "\n".join(lines) + "\n"


_PROFILES = {
    name: tomllib.loads((BUILTIN_PROFILE_DIR / f"{name}.toml").read_text())
    for name in builtin_profile_names()
}
_DBC_SOURCES = [
    "tgw:tgw_generic.dbc", "opendbc:bmw_e9x_e8x.dbc", "tgw:missing.dbc", "opendbc:../../etc/passwd",
    "/etc/hostname", "garbage.dbc", "", "tgw:", ":", "/dev/null",
]  # fmt: skip


@FUZZ
@given(data=st.data())
def test_profile_loading_fails_only_with_profile_error(data: st.DataObject, scratch: Path) -> None:
    tried("device.profile")
    base = _PROFILES[data.draw(st.sampled_from(sorted(_PROFILES)))]
    document = data.draw(mutated(base) | st.just(base))
    if isinstance(document, dict) and data.draw(st.booleans()):
        document = {
            **document,
            "dbc": data.draw(st.lists(st.sampled_from(_DBC_SOURCES), max_size=3)),
        }
    directory = scratch / uuid.uuid4().hex
    directory.mkdir()
    (directory / "garbage.dbc").write_bytes(data.draw(st.binary(max_size=300)))
    try:
        text = to_toml(document) if isinstance(document, dict) else data.draw(st.text(max_size=200))
    except RecursionError:  # our little writer, on a value nested hundreds deep
        text = "name = " + "[" * 400 + "]" * 400
    path = directory / "fuzzed.toml"
    path.write_text(text, encoding="utf-8")
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        message = str(exc)
        assert message
        return
    assert profile.mappings is not None


deep_toml = st.builds(
    lambda key, opener, depth: f"{key} = " + opener * depth + "1" + "]}"[opener == "{a = "] * depth,
    st.sampled_from(["name", "signals", "x"]),
    st.sampled_from(["[", "{a = "]),
    st.integers(1, 20_000),
)


@FUZZ
@given(
    text=st.text(max_size=500)
    | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
    | deep_toml
)
def test_profile_loading_of_any_text(text: str, scratch: Path) -> None:
    tried("device.profile_text")
    path = _file(scratch, ".toml")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError):
        load_profile(path)


# -- car: CAN frames through the DBC decoding ------------------------------------------------------

_DECODERS = {name: FrameDecoder(load_profile(name)) for name in builtin_profile_names()}
_FRAME_IDS = sorted({m.message.frame_id for d in _DECODERS.values() for m in d.profile.mappings})


@FUZZ
@given(
    profile=st.sampled_from(sorted(_DECODERS)),
    frame_id=st.sampled_from(_FRAME_IDS) | st.integers(0, 0x1FFFFFFF),
    data=st.binary(max_size=64),
    extended=st.booleans(),
    remote=st.booleans(),
    error=st.booleans(),
)
def test_can_frame_decoding_never_crashes_and_only_yields_valid_signals(  # noqa: PLR0917  # hypothesis arguments
    profile: str, frame_id: int, data: bytes, extended: bool, remote: bool, error: bool
) -> None:
    tried("device.can_frame")
    frame = can.Message(
        arbitration_id=frame_id if extended else frame_id & 0x7FF,
        data=data,
        is_extended_id=extended,
        is_remote_frame=remote and not error,
        is_error_frame=error,
        is_fd=len(data) > 8,
        check=False,
    )
    # A fresh decoder: it remembers the last payload per frame id (hypothesis replays inputs).
    decoded = FrameDecoder(_DECODERS[profile].profile).decode(frame)
    if decoded is None:
        return
    # Whatever a garbage frame decodes to is a valid protocol signal (out-of-range values are
    # dropped). A lone lat or lon can come out of one frame; the unit's tracker sends the pair
    # only together (device_sim/tracker.py), so each is checked with a valid partner here.
    for name, value in decoded.values.items():
        partner = {"lat": {"lon": 0.0}, "lon": {"lat": 0.0}}.get(name, {})
        Signals.model_validate({name: value, **partner})


# -- car: commands ---------------------------------------------------------------------------------

_CAR_KEY = Ed25519PrivateKey.generate()
_VERIFIER = Ed25519Verifier({"car-key": _CAR_KEY.public_key()})


def _signed_command(**changes: Any) -> CommandMessage:
    fields = {
        "v": 1, "command_id": uuid.uuid4(), "vin": VIN, "action": CommandAction.UNLOCK,
        "issued_at": NOW, "expires_at": NOW + 30_000, "nonce": "a" * 32, "key_id": "car-key",
        "signature": "AA==",
    } | changes  # fmt: skip
    command = CommandMessage.model_validate(fields)
    signature = base64.b64encode(_CAR_KEY.sign(command.signing_bytes())).decode()
    return command.model_copy(update={"signature": signature})


def _signed(document: dict[str, Any]) -> CommandMessage:
    return CommandMessage.model_validate_json(json.dumps(document))


class _Memory:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def command_seen(self, command_id: str, nonce: str) -> bool:
        return command_id in self.seen or nonce in self.seen

    def remember_command(self, command_id: str, nonce: str, expires_at: int) -> None:
        self.seen |= {command_id, nonce}


@FUZZ
@given(data=st.data())
def test_command_parsing_and_checking_never_crash(data: st.DataObject) -> None:
    tried("device.command")
    genuine = json.loads(_signed_command().model_dump_json())
    choice = data.draw(st.sampled_from(["mutated", "bytes", "json"]))
    if choice == "mutated":
        payload = dumps(data.draw(mutated(genuine)))
    elif choice == "bytes":
        payload = data.draw(st.binary(max_size=600))
    else:
        payload = dumps(data.draw(json_values))
    parsed = parse_command(payload)
    if isinstance(parsed, UnreadableCommand):
        assert parsed.detail
        return
    verified = _VERIFIER.verify(parsed)
    if verified:  # only the genuine fields carry a valid signature
        assert parsed.signing_bytes() == _signed(genuine).signing_bytes()
    gate = CommandGate(
        vin=VIN, capabilities=tuple(CommandAction), verifier=_VERIFIER, memory=_Memory()
    )
    values = data.draw(
        st.dictionaries(
            st.sampled_from(["door_fl_open", "trunk_open", "ignition", "speed"]),
            st.booleans() | st.floats(allow_nan=False),
            max_size=4,
        )
    )
    rejection = gate.check(parsed, now_ms=NOW, busy=data.draw(st.booleans()), values=values)
    if not verified:
        assert rejection is not None
        assert rejection.reason == "bad_signature"


@FUZZ
@given(
    key_id=st.text(max_size=70),
    signature=st.text(max_size=120)
    | st.binary(min_size=0, max_size=80).map(lambda b: base64.b64encode(b).decode()),
    field=st.sampled_from(["command_id", "vin", "action", "issued_at", "expires_at", "nonce"]),
)
def test_signatures_verify_only_for_the_signed_fields(
    key_id: str, signature: str, field: str
) -> None:
    tried("device.signature")
    genuine = _signed_command()
    assert _VERIFIER.verify(genuine)
    changed = {
        "command_id": uuid.uuid4(), "vin": OTHER_VIN,
        "action": CommandAction.UNLOCK_AND_ENABLE_DRIVING,
        "issued_at": NOW + 1, "expires_at": NOW + 60_000, "nonce": "b" * 32,
    }[field]  # fmt: skip
    assert not _VERIFIER.verify(genuine.model_copy(update={field: changed}))
    try:
        forged = genuine.model_copy(update={"key_id": key_id, "signature": signature})
    except ValidationError:
        return
    assert _VERIFIER.verify(forged) == (key_id == "car-key" and signature == genuine.signature)


@FUZZ
@given(
    keys=st.dictionaries(
        st.text(max_size=70),
        st.text(max_size=80) | st.binary(min_size=32, max_size=32).map(bytes.hex),
        max_size=3,
    )
)
def test_trusted_key_parsing_fails_only_with_its_error(keys: dict[str, str]) -> None:
    tried("device.trusted_keys")
    try:
        parsed = parse_trusted_keys(keys)
    except DeviceConfigurationError:
        return
    except DeviceError:
        raise
    assert set(parsed) == set(keys)
