"""The unit composes telemetry envelopes by hand: they must equal the model's own JSON."""

from __future__ import annotations

import pytest

from device_sim.unit import compose_telemetry
from schemas import Signals, TelemetryMessage, TelemetrySample

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
