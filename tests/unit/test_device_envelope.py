"""The unit writes samples and telemetry envelopes by hand: they must equal the model's JSON."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.tracker import SignalTracker
from device_sim.unit import compose_telemetry
from schemas import Signals, TelemetryMessage, TelemetrySample
from schemas.signals import SIGNAL_CATALOG, SignalSpec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("count", [1, 2, 7])
def test_composed_envelope_is_the_models_json(count: int) -> None:
    samples = tuple(
        TelemetrySample(
            seq=seq,
            ts=1_800_000_000_000 + seq,
            signals=Signals(lat=48.1 + seq / 1e4, lon=11.5, speed=12.5, locked=seq % 2 == 0),
        )
        for seq in range(count)
    )
    bodies = [sample.model_dump_json(exclude_none=True) for sample in samples]
    vin, boot_id = "WBA12345678901234", "0f8fad5bd9cb469fa16570867728950e"
    composed = compose_telemetry(vin, boot_id, bodies)
    expected = TelemetryMessage(v=1, vin=vin, boot_id=boot_id, samples=samples)
    assert composed == expected.model_dump_json(exclude_none=True)
    assert TelemetryMessage.model_validate_json(composed) == expected


def _value(spec: SignalSpec) -> st.SearchStrategy[float | bool]:
    if spec.type is bool:
        return st.booleans()
    low = spec.minimum if spec.minimum is not None else -1e20
    high = spec.maximum if spec.maximum is not None else 1e20
    floats = st.floats(
        min_value=low, max_value=high, exclude_max=spec.maximum_exclusive, allow_nan=False
    )
    # Tiny and huge values are where Python's repr and pydantic's JSON differ.
    edge = st.sampled_from([0.0, -0.0, 1e-4, 9.9999e-5, 3.8e-05, 1e-7, 1e15, 1e16, 5e17])
    return (floats | edge.filter(lambda v: low <= v <= high)).map(lambda v: round(v, 7))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_hand_written_sample_is_the_models_json(data: st.DataObject) -> None:
    tracker = SignalTracker()
    for spec in SIGNAL_CATALOG:
        if data.draw(st.booleans(), label=f"has {spec.name}"):
            tracker.values[spec.name] = data.draw(_value(spec), label=spec.name)
    snapshot = tracker.snapshot()
    written = tracker.signals_json()
    if snapshot is None:
        assert written is None
        return
    assert written == snapshot.model_dump_json(exclude_none=True)
    sample = TelemetrySample(seq=7, ts=1_800_000_000_000, signals=snapshot)
    body = f'{{"seq":7,"ts":1800000000000,"signals":{written}}}'
    assert body == sample.model_dump_json(exclude_none=True)
