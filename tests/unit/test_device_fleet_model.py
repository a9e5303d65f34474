"""Fleet identities and behaviour: valid VINs, credentials files, determinism for a seed."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from device_sim.driving import CITIES, CarBehaviour, Phase
from device_sim.ecu import VehicleState
from device_sim.errors import DeviceConfigurationError
from device_sim.identity import fleet_vins, make_vin, read_credentials, write_credentials
from device_sim.settings import SimSettings
from schemas.vin import parse_vin

pytestmark = pytest.mark.unit

PROFILES = ("tgw_generic", "bmw_e8x", "vw_mqb")


def test_vins_are_iso_3779_with_a_check_digit() -> None:
    rng = random.Random(3)
    for _ in range(500):
        vin = make_vin(rng, "bmw_e8x")
        assert parse_vin(vin) == vin
        assert vin.startswith("WBA")
        # North American check digit (position 9), computed independently.
        numbers = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 7, 9, 2, 3, 4, 5, 6, 7, 8, 9]
        letters = dict(zip("ABCDEFGHJKLMNPRSTUVWXYZ", numbers, strict=True))
        values = {**{str(d): d for d in range(10)}, **letters}
        weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2]
        check = sum(values[c] * w for c, w in zip(vin, weights, strict=True)) % 11
        assert vin[8] == ("X" if check == 10 else str(check))


def test_a_fleet_is_the_same_for_the_same_seed() -> None:
    first = fleet_vins(300, 42, PROFILES)
    assert first == fleet_vins(300, 42, PROFILES)
    assert first != fleet_vins(300, 43, PROFILES)
    assert len({vin for vin, _ in first}) == 300
    assert [profile for _, profile in first[:4]] == [*PROFILES, PROFILES[0]]
    # A bigger fleet with the same seed starts with the same cars.
    assert fleet_vins(400, 42, PROFILES)[:300] == first


def test_credentials_round_trip_private(tmp_path: Path) -> None:
    path = tmp_path / "creds.csv"
    vins = [vin for vin, _ in fleet_vins(5, 1, PROFILES)]
    assert write_credentials(path, vins) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = read_credentials(path)
    assert list(credentials) == vins
    assert all(len(password) >= 24 for password in credentials.values())
    # Rewriting keeps existing passwords.
    write_credentials(path, vins, credentials)
    assert read_credentials(path) == credentials


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("WBA12345678901234\n", "expected 'vin,password'"), ("NOTAVIN,secret\n", "17 characters")],
)
def test_bad_credentials_files(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "creds.csv"
    path.write_text("# comment\nvin,password\n" + text)
    with pytest.raises(DeviceConfigurationError, match=complaint):
        read_credentials(path)
    with pytest.raises(DeviceConfigurationError, match="tgw sim credentials"):
        read_credentials(tmp_path / "missing.csv")


def _trajectory(seed: int, steps: int) -> list[tuple[float, ...]]:
    state = VehicleState()
    behaviour = CarBehaviour(
        state, CITIES["munich"], random.Random(seed), start_driving=True, driving_share=0.5
    )
    points: list[tuple[float, ...]] = []
    for _ in range(steps):
        behaviour.advance(1.0)
        points.append((state.lat, state.lon, state.speed, state.fuel, float(state.locked)))
    return points


def test_driving_is_deterministic_for_a_seed() -> None:
    assert _trajectory(7, 900) == _trajectory(7, 900)
    assert _trajectory(7, 900) != _trajectory(8, 900)


def test_a_rental_cycle_is_plausible() -> None:
    state = VehicleState()
    city = CITIES["munich"]
    behaviour = CarBehaviour(state, city, random.Random(11), start_driving=True)
    lat0, lon0 = city.center
    phases = set()
    max_speed = 0.0
    for _ in range(4 * 3600):
        behaviour.advance(1.0)
        phases.add(behaviour.phase)
        max_speed = max(max_speed, state.speed)
        assert abs(state.lat - lat0) < 0.06  # about 6 km
        assert abs(state.lon - lon0) < 0.09
        if state.ignition:
            assert not state.locked
        if behaviour.phase is Phase.PARKED:
            assert state.locked
            assert not state.ignition
            assert state.speed == 0
    assert phases == set(Phase)
    assert 30 <= max_speed <= 50
    assert behaviour.trips >= 2


def test_settings_read_the_tgw_sim_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGW_SIM_MQTT__PORT", "18830")
    monkeypatch.setenv("TGW_SIM_FLEET__CARS", "12")
    settings = SimSettings(mqtt={"host": "broker.example"})
    assert (settings.mqtt.host, settings.mqtt.port, settings.fleet.cars) == (
        "broker.example",
        18830,
        12,
    )
