"""Decoding golden files: frames encoded from each shipped DBC in, expected VSS values out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.codec import FrameDecoder, FrameEncoder
from device_sim.profiles import builtin_profile_names, load_profile
from schemas.signals import SIGNAL_CATALOG

pytestmark = pytest.mark.unit

GOLDEN_DIR = Path(__file__).parents[1] / "data" / "device" / "golden"
VSS_BY_WIRE = {spec.name: spec.vss_path for spec in SIGNAL_CATALOG}


def _cases() -> list[Any]:
    params = []
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        params += [
            pytest.param(document["profile"], case, id=f"{path.stem}: {case['name']}")
            for case in document["cases"]
        ]
    return params


def _frame(spec: dict[str, Any]) -> can.Message:
    return can.Message(
        arbitration_id=spec["id"],
        data=bytes.fromhex(spec["data"]),
        is_extended_id=spec["extended"],
        is_remote_frame=spec.get("remote", False),
    )


def test_every_shipped_profile_has_a_golden_file() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.json")} == set(builtin_profile_names())


@pytest.mark.parametrize(("profile_name", "case"), _cases())
def test_golden(profile_name: str, case: dict[str, Any]) -> None:
    decoder = FrameDecoder(load_profile(profile_name))
    values: dict[str, float | bool] = {}
    flagged: list[dict[str, float | str]] = []
    immobilized = None
    for spec in case["frames"]:
        decoded = decoder.decode(_frame(spec))
        if decoded is None:
            continue
        values.update(decoded.values)
        flagged += [{"signal": o.signal, "value": o.value} for o in decoded.out_of_range]
        if decoded.immobilized is not None:
            immobilized = decoded.immobilized

    by_vss = {VSS_BY_WIRE[wire]: value for wire, value in values.items()}
    assert by_vss == pytest.approx(case["expected"], abs=1e-9)
    for vss, value in case["expected"].items():
        assert type(by_vss[vss]) is type(value) or isinstance(value, float)
    assert flagged == [
        {"signal": o["signal"], "value": pytest.approx(o["value"])}
        for o in case.get("out_of_range", [])
    ]
    if "immobilized" in case:
        assert immobilized is case["immobilized"]
    for counter, expected in case.get("counters", {}).items():
        assert getattr(decoder.counters, counter) == expected


@pytest.mark.parametrize("profile_name", builtin_profile_names())
def test_encoder_and_decoder_agree(profile_name: str) -> None:
    profile = load_profile(profile_name)
    state: dict[str, float | bool] = {
        "lat": 48.137154, "lon": 11.576124, "heading": 123.45, "speed": 42.0,
        "fuel": 63.0, "soc": 71.5, "odometer": 12345.0, "batt_v": 12.61,
        "ignition": True, "locked": False, "door_fl_open": True, "door_fr_open": False,
        "door_rl_open": False, "door_rr_open": True, "trunk_open": False,
    }  # fmt: skip
    encoder, decoder = FrameEncoder(profile), FrameDecoder(profile)
    values: dict[str, float | bool] = {}
    immobilized = None
    for message in encoder.messages:
        decoded = decoder.decode(encoder.encode(message, state, immobilized=True))
        assert decoded is not None
        assert decoded.out_of_range == []
        values.update(decoded.values)
        immobilized = decoded.immobilized if decoded.immobilized is not None else immobilized
    assert set(values) == profile.wire_signals
    expected = {wire: state[wire] for wire in profile.wire_signals}
    assert values == pytest.approx(expected, abs=0.06)
    assert immobilized is True


def test_an_unchanged_frame_is_not_decoded_again() -> None:
    profile = load_profile("tgw_generic")
    encoder, decoder = FrameEncoder(profile), FrameDecoder(profile)
    message = encoder.messages[0]
    frame = encoder.encode(message, {"lat": 48.1, "lon": 11.5})
    assert decoder.decode(frame) is not None
    assert decoder.decode(frame) is None
    assert decoder.counters.unchanged == 1


frames = st.builds(
    can.Message,
    arbitration_id=st.one_of(
        st.sampled_from([0x5C0, 0x5C1, 0x5C2, 0x5C3, 0x5C4, 0x5C5, 0x1A0, 0x130, 0x3B4, 0xFD,
                         0x3C0, 0x3DB, 0x6B7, 0x6B8]),
        st.integers(0, 0x7FF),
    ),
    data=st.binary(max_size=8),
    is_remote_frame=st.booleans(),
    is_error_frame=st.booleans(),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(frames, max_size=30), profile_name=st.sampled_from(builtin_profile_names()))
def test_garbage_frames_never_raise(frames: list[can.Message], profile_name: str) -> None:
    decoder = FrameDecoder(load_profile(profile_name))
    for frame in frames:
        decoded = decoder.decode(frame)
        if decoded is not None:
            for wire, value in decoded.values.items():
                spec = next(s for s in SIGNAL_CATALOG if s.name == wire)
                if spec.type is bool:
                    assert isinstance(value, bool)
                else:
                    assert spec.minimum is None or value >= spec.minimum
                    assert spec.maximum is None or value <= spec.maximum
    counters = decoder.counters
    assert counters.frames == len(frames)
    assert counters.frames == (
        counters.decoded + counters.unchanged + counters.unknown + counters.malformed
    )
