"""VIN validation (ISO 3779): what parses, what does not, and what the error says."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import StatusMessage, VinError, parse_vin
from schemas.vin import VIN_LENGTH, VIN_PATTERN

pytestmark = pytest.mark.unit

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
vins = st.text(VIN_ALPHABET, min_size=VIN_LENGTH, max_size=VIN_LENGTH)


@given(vins)
def test_a_vin_from_the_alphabet_parses_to_itself(vin: str) -> None:
    assert parse_vin(vin) == vin


@given(vins, st.data())
def test_a_vin_with_i_o_or_q_never_parses(vin: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, VIN_LENGTH - 1))
    letter = data.draw(st.sampled_from("IOQioq"))
    bad = vin[:position] + letter + vin[position + 1 :]
    with pytest.raises(VinError, match="never contains I, O or Q"):
        parse_vin(bad)


@given(st.text(VIN_ALPHABET).filter(lambda s: len(s) != VIN_LENGTH))
def test_a_vin_of_the_wrong_length_never_parses(value: str) -> None:
    with pytest.raises(VinError, match=f"has 17 characters, got {len(value)}"):
        parse_vin(value)


@given(st.text().filter(lambda s: len(s) != VIN_LENGTH))
def test_any_string_of_the_wrong_length_is_refused_for_its_length(value: str) -> None:
    with pytest.raises(VinError, match="has 17 characters"):
        parse_vin(value)


@given(vins.filter(lambda vin: any(c.isalpha() for c in vin)), st.data())
def test_a_lowercase_vin_never_parses(vin: str, data: st.DataObject) -> None:
    letters = [i for i, c in enumerate(vin) if c.isalpha()]
    position = data.draw(st.sampled_from(letters))
    lowered = vin[:position] + vin[position].lower() + vin[position + 1 :]
    with pytest.raises(VinError, match="capital letters"):
        parse_vin(lowered)


@given(vins, st.data())
def test_a_vin_with_a_foreign_character_never_parses(vin: str, data: st.DataObject) -> None:
    foreign = data.draw(
        # A letter whose upper case differs is reported as "capital letters" instead.
        st.characters(exclude_characters=VIN_ALPHABET + "IOQioq").filter(lambda c: c.upper() == c)
    )
    position = data.draw(st.integers(0, VIN_LENGTH - 1))
    bad = vin[:position] + foreign + vin[position + 1 :]
    with pytest.raises(VinError, match="only digits and the letters A-Z except I, O, Q"):
        parse_vin(bad)


@given(st.text(max_size=40))
def test_parse_vin_accepts_exactly_the_pattern_and_raises_only_vin_error(value: str) -> None:
    matches = re.fullmatch(VIN_PATTERN, value) is not None
    try:
        assert parse_vin(value) == value
    except VinError:
        assert not matches
    else:
        assert matches


def test_vin_error_is_a_value_error() -> None:
    # pydantic turns ValueError into a ValidationError; the Vin field type relies on it.
    assert issubclass(VinError, ValueError)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("WBAUF11080E12345", "has 17 characters, got 16"),
        ("WBAUF11080E1234567", "has 17 characters, got 18"),
        ("WBAUF11O80E123456", "never contains I, O or Q"),
        ("wbauf11080e123456", "capital letters"),
        ("WBAUF11080E12345-", "only digits"),
        ("WBAUF11080E12345\n", "only digits"),
    ],
)
def test_the_model_field_reports_the_vin_rule(value: str, message: str) -> None:
    will = {"v": 1, "vin": value, "online": False, "reason": "connection_lost", "ts": 1748850900000}
    payload = json.dumps(will)
    with pytest.raises(ValidationError, match=message) as caught:
        StatusMessage.model_validate_json(payload)
    assert caught.value.errors()[0]["loc"] == ("vin",)
