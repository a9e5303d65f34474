"""Telemetry messages and the signals they carry: ranges, types, batching and the seq rule."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import SIGNAL_CATALOG, SIGNAL_NAMES, Signals, SignalSpec, TelemetryMessage
from schemas.limits import (
    MAX_BOOT_ID_LENGTH,
    MAX_SAMPLES_PER_MESSAGE,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
)

pytestmark = pytest.mark.unit

NOW = 1_748_851_200_000
NUMERIC = [spec for spec in SIGNAL_CATALOG if spec.type is float]
BOOLEAN = [spec for spec in SIGNAL_CATALOG if spec.type is bool]


def message(samples: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    base = {"v": 1, "vin": "WBAUF11080E123456", "boot_id": "b00t", "samples": samples}
    return base | changes


def sample(seq: int = 0, ts: int = NOW, **signals: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "signals": signals or {"speed": 0}}


def parse(document: object) -> TelemetryMessage:
    return TelemetryMessage.model_validate_json(json.dumps(document))


def parse_signals(signals: dict[str, Any]) -> Signals:
    return Signals.model_validate_json(json.dumps(signals))


def _alone(name: str, value: object) -> dict[str, Any]:
    # lat and lon only come together; pair the other one with a valid value.
    partner = {"lat": {"lon": 0}, "lon": {"lat": 0}}.get(name, {})
    return {name: value} | partner


# --------------------------------------------------------------------------------------------
# The catalog
# --------------------------------------------------------------------------------------------


def test_catalog_lists_every_signal_once_in_model_order() -> None:
    assert (
        tuple(spec.name for spec in SIGNAL_CATALOG) == SIGNAL_NAMES == tuple(Signals.model_fields)
    )


@pytest.mark.parametrize("spec", SIGNAL_CATALOG, ids=[spec.name for spec in SIGNAL_CATALOG])
def test_every_signal_has_a_vss_path_a_unit_and_a_description(spec: SignalSpec) -> None:
    assert spec.vss_path.startswith("Vehicle.")
    assert spec.unit
    assert spec.description
    if spec.type is float:
        assert spec.minimum is not None
        assert spec.maximum is not None
    else:
        assert spec.minimum is spec.maximum is None


def test_heading_is_below_360_not_up_to_it() -> None:
    (heading,) = [spec for spec in SIGNAL_CATALOG if spec.name == "heading"]
    assert heading.maximum == 360
    assert heading.maximum_exclusive
    assert not any(spec.maximum_exclusive for spec in SIGNAL_CATALOG if spec.name != "heading")


# --------------------------------------------------------------------------------------------
# Ranges and types, signal by signal
# --------------------------------------------------------------------------------------------


def _in_range(spec: SignalSpec) -> st.SearchStrategy[float]:
    assert spec.minimum is not None
    assert spec.maximum is not None
    return st.floats(spec.minimum, spec.maximum, exclude_max=spec.maximum_exclusive)


@pytest.mark.parametrize("spec", NUMERIC, ids=[spec.name for spec in NUMERIC])
@given(data=st.data())
def test_a_value_in_range_is_accepted(spec: SignalSpec, data: st.DataObject) -> None:
    value = data.draw(_in_range(spec))
    assert parse_signals(_alone(spec.name, value)).present()[spec.name] == value


@pytest.mark.parametrize("spec", NUMERIC, ids=[spec.name for spec in NUMERIC])
@given(data=st.data())
def test_a_value_out_of_range_is_refused(spec: SignalSpec, data: st.DataObject) -> None:
    assert spec.minimum is not None
    assert spec.maximum is not None
    below = st.floats(max_value=spec.minimum, exclude_max=True, allow_infinity=False)
    above = st.floats(
        min_value=spec.maximum, exclude_min=not spec.maximum_exclusive, allow_infinity=False
    )
    value = data.draw((below | above).filter(lambda v: not math.isnan(v)))
    with pytest.raises(ValidationError) as caught:
        parse_signals(_alone(spec.name, value))
    assert caught.value.errors()[0]["loc"] == (spec.name,)


@pytest.mark.parametrize("spec", NUMERIC, ids=[spec.name for spec in NUMERIC])
def test_range_edges(spec: SignalSpec) -> None:
    assert spec.minimum is not None
    assert spec.maximum is not None
    parse_signals(_alone(spec.name, spec.minimum))
    if spec.maximum_exclusive:
        parse_signals(_alone(spec.name, math.nextafter(spec.maximum, -math.inf)))
        with pytest.raises(ValidationError):
            parse_signals(_alone(spec.name, spec.maximum))
    else:
        parse_signals(_alone(spec.name, spec.maximum))
        with pytest.raises(ValidationError):
            parse_signals(_alone(spec.name, math.nextafter(spec.maximum, math.inf)))


@pytest.mark.parametrize("spec", NUMERIC, ids=[spec.name for spec in NUMERIC])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(spec: SignalSpec, literal: str) -> None:
    text = json.dumps(_alone(spec.name, 0)).replace(
        f'"{spec.name}": 0', f'"{spec.name}": {literal}'
    )
    with pytest.raises(ValidationError, match="finite number"):
        Signals.model_validate_json(text)


@pytest.mark.parametrize("spec", NUMERIC, ids=[spec.name for spec in NUMERIC])
@pytest.mark.parametrize("value", ["12", True, [1], {"value": 1}])
def test_a_number_signal_takes_only_numbers(spec: SignalSpec, value: object) -> None:
    with pytest.raises(ValidationError):
        parse_signals(_alone(spec.name, value))


@pytest.mark.parametrize("spec", BOOLEAN, ids=[spec.name for spec in BOOLEAN])
@pytest.mark.parametrize("value", [0, 1, "true", 1.0])
def test_a_boolean_signal_takes_only_booleans(spec: SignalSpec, value: object) -> None:
    with pytest.raises(ValidationError):
        parse_signals({spec.name: value})


@pytest.mark.parametrize("spec", BOOLEAN, ids=[spec.name for spec in BOOLEAN])
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_signal_takes_booleans(spec: SignalSpec, value: bool) -> None:
    assert parse_signals({spec.name: value}).present() == {spec.name: value}


# --------------------------------------------------------------------------------------------
# Signals as a whole
# --------------------------------------------------------------------------------------------


def _signal_value(spec: SignalSpec) -> st.SearchStrategy[Any]:
    return st.booleans() if spec.type is bool else _in_range(spec)


signal_dicts = st.fixed_dictionaries(
    {}, optional={spec.name: _signal_value(spec) for spec in SIGNAL_CATALOG}
)


@given(signal_dicts)
def test_a_sample_carries_at_least_one_signal_and_lat_lon_together(signals: dict[str, Any]) -> None:
    valid = bool(signals) and (("lat" in signals) == ("lon" in signals))
    try:
        parsed = parse_signals(signals)
    except ValidationError:
        assert not valid
    else:
        assert valid
        assert parsed.present() == signals


def test_null_is_the_same_as_absent() -> None:
    assert parse_signals({"speed": 3, "fuel": None}).present() == {"speed": 3}
    with pytest.raises(ValidationError, match="at least one signal"):
        parse_signals({"speed": None})


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse_signals({"speed": 3, "Speed": 3})


# --------------------------------------------------------------------------------------------
# The message: batching, seq, boot id, timestamps
# --------------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, MAX_SEQ), min_size=1, max_size=20))
def test_each_sample_in_a_message_has_its_own_seq(seqs: list[int]) -> None:
    document = message([sample(seq) for seq in seqs])
    if len(set(seqs)) == len(seqs):
        assert [s.seq for s in parse(document).samples] == seqs
    else:
        with pytest.raises(ValidationError, match="each sample in a message has its own seq"):
            parse(document)


def test_a_duplicate_seq_is_refused_even_with_other_values() -> None:
    with pytest.raises(ValidationError, match="own seq"):
        parse(message([sample(7, NOW - 1000, speed=1), sample(7, NOW, speed=2)]))


def test_samples_per_message_limit() -> None:
    assert len(parse(message([sample(i) for i in range(MAX_SAMPLES_PER_MESSAGE)])).samples) == 500
    with pytest.raises(ValidationError, match="samples"):
        parse(message([sample(i) for i in range(MAX_SAMPLES_PER_MESSAGE + 1)]))
    with pytest.raises(ValidationError, match="samples"):
        parse(message([]))


@pytest.mark.parametrize("seq", [0, MAX_SEQ])
def test_seq_edges_are_accepted(seq: int) -> None:
    parse(message([sample(seq)]))


@pytest.mark.parametrize("seq", [-1, MAX_SEQ + 1, 1.0, "1"])
def test_seq_must_be_a_non_negative_json_safe_integer(seq: object) -> None:
    with pytest.raises(ValidationError, match="seq"):
        parse(message([{"seq": seq, "ts": NOW, "signals": {"speed": 0}}]))


@pytest.mark.parametrize(
    "ts", [MIN_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS + 1, 0, -1, float(NOW), str(NOW)]
)
def test_timestamps_are_integer_milliseconds_in_range(ts: object) -> None:
    with pytest.raises(ValidationError, match="ts"):
        parse(message([{"seq": 0, "ts": ts, "signals": {"speed": 0}}]))


@given(
    st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=MAX_BOOT_ID_LENGTH)
)
def test_boot_ids_from_the_alphabet_are_accepted(boot_id: str) -> None:
    assert parse(message([sample()], boot_id=boot_id)).boot_id == boot_id


@given(
    st.text(min_size=1, max_size=80).filter(
        lambda s: (
            len(s) > MAX_BOOT_ID_LENGTH
            or any(c not in string.ascii_letters + string.digits + "_-" for c in s)
        )
    )
)
def test_other_boot_ids_are_refused(boot_id: str) -> None:
    with pytest.raises(ValidationError, match="boot_id"):
        parse(message([sample()], boot_id=boot_id))


def test_the_message_is_immutable() -> None:
    parsed = parse(message([sample()]))
    with pytest.raises(ValidationError):
        parsed.boot_id = "other"  # type: ignore[misc]  # frozen: the assignment is the point
