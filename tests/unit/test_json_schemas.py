"""The JSON Schemas under schemas/json/ are the models' own, and agree with them.

- the checked-in files equal `generate_json_schemas()` byte for byte;
- every example of docs/protocol.md that the gateway accepts passes its JSON Schema too;
- anything the models accept, the JSON Schemas accept (a vendor validating offline is never
  stricter than the gateway). The reverse does not hold: docs/protocol.md section 14 lists the
  rules JSON Schema cannot express.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # ships no py.typed
from pydantic import TypeAdapter, ValidationError

import schemas
from schemas import (
    SIGNAL_CATALOG,
    CommandAction,
    CommandMessage,
    CommandOutcome,
    CommandReason,
    CommandResultMessage,
    Door,
    EventMessage,
    LockSource,
    Precondition,
    SignalSpec,
    StatusMessage,
    StatusReason,
    TelemetryMessage,
    TopicKind,
)
from schemas.commands import REJECTION_REASONS
from schemas.jsonschema import JSON_SCHEMA_DIR_NAME, generate_json_schemas
from schemas.limits import (
    MAX_BOOT_ID_LENGTH,
    MAX_COMMAND_TTL_MS,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
)

pytestmark = pytest.mark.unit

SCHEMA_DIR = Path(schemas.__file__).parent / JSON_SCHEMA_DIR_NAME
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXPORT_HINT = "run `tgw schemas export` and commit schemas/json"
GENERATED = generate_json_schemas()

_MODELS: dict[TopicKind, TypeAdapter[Any]] = {
    TopicKind.TELEMETRY: TypeAdapter(TelemetryMessage),
    TopicKind.EVENTS: TypeAdapter(EventMessage),
    TopicKind.STATUS: TypeAdapter(StatusMessage),
    TopicKind.COMMANDS: TypeAdapter(CommandMessage),
    TopicKind.COMMAND_RESULTS: TypeAdapter(CommandResultMessage),
}


def _validator(kind: TopicKind) -> Any:
    schema = json.loads(GENERATED[f"v1/{kind.value}.schema.json"])
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


VALIDATORS = {kind: _validator(kind) for kind in TopicKind}


def _schema_errors(kind: TopicKind, document: object) -> list[str]:
    errors = VALIDATORS[kind].iter_errors(document)
    return sorted(f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors)


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(GENERATED))
def test_checked_in_schema_equals_the_models(relative: str) -> None:
    path = SCHEMA_DIR / relative
    assert path.is_file(), f"{path} is missing: {EXPORT_HINT}"
    if path.read_text(encoding="utf-8") != GENERATED[relative]:
        pytest.fail(f"{path} differs from the models in schemas/: {EXPORT_HINT}")


def test_no_schema_file_is_left_over() -> None:
    present = {path.relative_to(SCHEMA_DIR).as_posix() for path in SCHEMA_DIR.rglob("*.json")}
    stale = present - set(GENERATED)
    assert not stale, f"no model writes {sorted(stale)}: delete them, then {EXPORT_HINT}"


def test_every_kind_has_a_schema() -> None:
    assert {f"v1/{kind.value}.schema.json" for kind in TopicKind} == set(GENERATED)


@pytest.mark.parametrize("relative", sorted(GENERATED))
def test_schema_is_valid_draft_2020_12(relative: str) -> None:
    schema = json.loads(GENERATED[relative])
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_generation_is_deterministic() -> None:
    assert generate_json_schemas() == GENERATED


def test_signal_schema_carries_vss_path_and_unit() -> None:
    schema = json.loads(GENERATED["v1/telemetry.schema.json"])
    properties = schema["$defs"]["Signals"]["properties"]
    for spec in SIGNAL_CATALOG:
        assert properties[spec.name]["x-vss"] == spec.vss_path
        assert properties[spec.name]["x-unit"] == spec.unit


# --------------------------------------------------------------------------------------------
# The doc's examples pass the JSON Schemas
# --------------------------------------------------------------------------------------------

# The same fences tests/unit/test_protocol_doc.py reads; that file checks their format.
_FENCE = re.compile(r"^```json (?P<kind>\w+)(?P<attrs>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)


def _doc_examples() -> list[tuple[int, TopicKind, str]]:
    text = DOC_PATH.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        if "reject=" in match["attrs"]:
            continue
        line = text.count("\n", 0, match.start()) + 1
        found.append((line, TopicKind(match["kind"]), match["body"]))
    return found


DOC_EXAMPLES = _doc_examples()


def test_doc_has_examples_of_every_kind() -> None:
    assert {kind for _, kind, _ in DOC_EXAMPLES} == set(TopicKind)


@pytest.mark.parametrize(
    ("line", "kind", "body"), DOC_EXAMPLES, ids=[f"line{line}-{k}" for line, k, _ in DOC_EXAMPLES]
)
def test_doc_example_passes_its_json_schema(line: int, kind: TopicKind, body: str) -> None:
    assert _schema_errors(kind, json.loads(body)) == [], f"docs/protocol.md line {line}"


# --------------------------------------------------------------------------------------------
# Whatever the models accept, the JSON Schemas accept
# --------------------------------------------------------------------------------------------

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
vins = st.text(VIN_ALPHABET, min_size=17, max_size=17)
boot_ids = st.text(
    string.ascii_letters + string.digits + "_-", min_size=1, max_size=MAX_BOOT_ID_LENGTH
)
seqs = st.integers(0, MAX_SEQ)
timestamps = st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - MAX_COMMAND_TTL_MS)
uuids = st.uuids().map(str)
finite = st.floats(allow_nan=False, allow_infinity=False)
# Free text (detail, firmware, signal) refuses control characters (schemas.base.TEXT_PATTERN).
free_text = st.characters(codec="utf-8", exclude_categories=["Cc"])


def _signal_value(spec: SignalSpec) -> st.SearchStrategy[Any]:
    if spec.type is bool:
        return st.booleans()
    low = spec.minimum if spec.minimum is not None else -1e9
    high = spec.maximum if spec.maximum is not None else 1e9
    floats = st.floats(low, high, exclude_max=spec.maximum_exclusive, allow_nan=False)
    integers = st.integers(int(low), int(high) - (1 if spec.maximum_exclusive else 0))
    return floats | integers


def _pair_lat_lon(signals: dict[str, Any]) -> dict[str, Any]:
    if ("lat" in signals) != ("lon" in signals):
        signals = {k: v for k, v in signals.items() if k not in {"lat", "lon"}}
    return signals or {"speed": 0}


signal_dicts = st.fixed_dictionaries(
    {}, optional={spec.name: _signal_value(spec) for spec in SIGNAL_CATALOG}
).map(_pair_lat_lon)


@st.composite
def telemetry_documents(draw: st.DrawFn) -> dict[str, Any]:
    sample_seqs = draw(st.lists(seqs, min_size=1, max_size=5, unique=True))
    samples = [
        {"seq": seq, "ts": draw(timestamps), "signals": draw(signal_dicts)} for seq in sample_seqs
    ]
    return {"v": 1, "vin": draw(vins), "boot_id": draw(boot_ids), "samples": samples}


@st.composite
def event_documents(draw: st.DrawFn) -> dict[str, Any]:
    base = {
        "v": 1,
        "vin": draw(vins),
        "boot_id": draw(boot_ids),
        "seq": draw(seqs),
        "ts": draw(timestamps),
    }
    extra: dict[str, Any] = draw(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["door_opened", "door_closed"]),
                    "door": st.sampled_from([d.value for d in Door]),
                }
            ),
            st.fixed_dictionaries({"type": st.sampled_from(["ignition_on", "ignition_off"])}),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["locked", "unlocked"])},
                optional={
                    "source": st.sampled_from([s.value for s in LockSource]),
                    "command_id": uuids | st.none(),
                },
            ),
            st.fixed_dictionaries({"type": st.just("low_fuel"), "level_pct": st.floats(0, 100)}),
            st.fixed_dictionaries({"type": st.just("low_voltage"), "voltage_v": st.floats(0, 60)}),
            st.fixed_dictionaries(
                {
                    "type": st.just("signal_out_of_range"),
                    "signal": st.text(free_text, min_size=1, max_size=128),
                    "value": finite,
                },
                optional={"minimum": finite | st.none(), "maximum": finite | st.none()},
            ),
            st.fixed_dictionaries(
                {"type": st.just("backlog_overflow"), "dropped": st.integers(1, 10**9)},
                optional={"oldest_dropped_ts": timestamps | st.none()},
            ),
        )
    )
    return base | extra


actions = st.sampled_from([action.value for action in CommandAction])


@st.composite
def status_documents(draw: st.DrawFn) -> dict[str, Any]:
    reason = draw(st.sampled_from(list(StatusReason)))
    document: dict[str, Any] = {
        "v": 1,
        "vin": draw(vins),
        "online": reason is StatusReason.CONNECTED,
        "reason": reason.value,
        "ts": draw(timestamps),
    }
    if reason is StatusReason.CONNECTED or draw(st.booleans()):
        document["boot_id"] = draw(boot_ids)
    if reason is StatusReason.CONNECTED:
        document["capabilities"] = draw(st.lists(actions, unique=True))
    optional = st.fixed_dictionaries(
        {},
        optional={
            "model": st.from_regex(r"\A[a-z0-9_]{1,64}\Z"),
            "firmware": st.text(free_text, max_size=64),
        },
    )
    return document | draw(optional)


@st.composite
def command_documents(draw: st.DrawFn) -> dict[str, Any]:
    issued_at = draw(timestamps)
    return {
        "v": 1,
        "command_id": draw(uuids),
        "vin": draw(vins),
        "action": draw(actions),
        "issued_at": issued_at,
        "expires_at": issued_at + draw(st.integers(1, MAX_COMMAND_TTL_MS)),
        "nonce": draw(st.from_regex(r"\A[0-9a-f]{32,64}\Z")),
        "key_id": draw(st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")),
        "signature": draw(st.binary(min_size=1, max_size=128)).hex(),
    }


@st.composite
def command_result_documents(draw: st.DrawFn) -> dict[str, Any]:
    outcome = draw(st.sampled_from(list(CommandOutcome)))
    document: dict[str, Any] = {
        "v": 1,
        "command_id": draw(uuids),
        "vin": draw(vins),
        "ts": draw(timestamps),
        "outcome": outcome.value,
    }
    if outcome is CommandOutcome.REJECTED:
        document["reason"] = draw(st.sampled_from(sorted(REJECTION_REASONS)))
    elif outcome is CommandOutcome.FAILED:
        document["reason"] = draw(st.sampled_from(list(CommandReason)))
    if document.get("reason") == CommandReason.PRECONDITION_FAILED:
        document["failed_preconditions"] = draw(
            st.lists(st.sampled_from([p.value for p in Precondition]), min_size=1, unique=True)
        )
    optional = st.fixed_dictionaries(
        {}, optional={"detail": st.text(free_text, max_size=500), "state": signal_dicts}
    )
    return document | draw(optional)


DOCUMENTS: dict[TopicKind, st.SearchStrategy[dict[str, Any]]] = {
    TopicKind.TELEMETRY: telemetry_documents(),
    TopicKind.EVENTS: event_documents(),
    TopicKind.STATUS: status_documents(),
    TopicKind.COMMANDS: command_documents(),
    TopicKind.COMMAND_RESULTS: command_result_documents(),
}


@pytest.mark.parametrize("kind", list(TopicKind), ids=[kind.value for kind in TopicKind])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_model_accepts_the_schema_accepts(kind: TopicKind, data: st.DataObject) -> None:
    document = data.draw(DOCUMENTS[kind])
    # The strategies build valid messages; the model is the judge of that.
    _MODELS[kind].validate_json(json.dumps(document))
    assert _schema_errors(kind, document) == []


def _mutations(document: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=5,
    )
    keys = sorted(document)
    replace = st.tuples(st.sampled_from(keys), json_values).map(
        lambda kv: document | {kv[0]: kv[1]}
    )
    delete = st.sampled_from(keys).map(
        lambda k: {key: v for key, v in document.items() if key != k}
    )
    add = st.tuples(st.text(max_size=10), json_values).map(lambda kv: {kv[0]: kv[1]} | document)
    return replace | delete | add


@pytest.mark.parametrize("kind", list(TopicKind), ids=[kind.value for kind in TopicKind])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutant_the_model_accepts_the_schema_accepts(
    kind: TopicKind, data: st.DataObject
) -> None:
    mutant = data.draw(DOCUMENTS[kind].flatmap(_mutations))
    try:
        _MODELS[kind].validate_json(json.dumps(mutant))
    except ValidationError:
        return  # refused by the model: the schema may say anything
    assert _schema_errors(kind, mutant) == []


@pytest.mark.parametrize(
    ("kind", "document"),
    [
        (TopicKind.TELEMETRY, {"v": True}),
        (TopicKind.TELEMETRY, {"v": 2}),
        (TopicKind.STATUS, {"vin": "wbauf11080e123456"}),
        (TopicKind.STATUS, {"vin": "WBAUF11080E12345O"}),
        (TopicKind.STATUS, {"firmware": "x" * 65}),
        (TopicKind.STATUS, {"unknown": 1}),
    ],
)
def test_schema_refuses_what_the_model_refuses(kind: TopicKind, document: dict[str, Any]) -> None:
    will = {
        "v": 1,
        "vin": "WBAUF11080E123456",
        "online": False,
        "reason": "connection_lost",
        "ts": MIN_TIMESTAMP_MS,
    }
    base = (
        will
        if kind is TopicKind.STATUS
        else {
            "v": 1,
            "vin": "WBAUF11080E123456",
            "boot_id": "b",
            "samples": [{"seq": 0, "ts": MIN_TIMESTAMP_MS, "signals": {"speed": 1}}],
        }
    )
    mutant = base | document
    assert _schema_errors(kind, base) == []
    assert _schema_errors(kind, mutant) != []
    with pytest.raises(ValidationError):
        _MODELS[kind].validate_json(json.dumps(mutant))
