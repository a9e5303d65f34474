"""Vehicle profiles: the shipped ones load; broken ones are refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_sim.errors import ProfileError
from device_sim.profiles import builtin_profile_names, load_profile
from schemas.commands import CommandAction

pytestmark = pytest.mark.unit

MINIMAL = """
name = "test_car"
dbc = ["tgw:tgw_generic.dbc"]

[signals.speed]
message = "TGW_Powertrain"
signal = "VehicleSpeed"
"""


def _write(tmp_path: Path, text: str, name: str = "car.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_profiles() -> None:
    assert {"tgw_generic", "tgw_generic_ev", "bmw_e8x", "vw_mqb"} <= set(builtin_profile_names())
    for name in builtin_profile_names():
        profile = load_profile(name)
        assert profile.name == name
        assert CommandAction.LOCK in profile.capabilities
        assert {"lat", "lon", "speed", "locked", "door_fl_open", "ignition"} <= profile.wire_signals


def test_profiles_are_loaded_once() -> None:
    assert load_profile("vw_mqb") is load_profile("vw_mqb")


def test_real_dbcs_come_from_opendbc() -> None:
    bmw = load_profile("bmw_e8x")
    speed = next(m for m in bmw.mappings if m.wire == "speed")
    assert (speed.message.name, speed.message.frame_id) == ("Speed", 0x1A0)
    vw = load_profile("vw_mqb")
    doors = {m.wire: m.signal.name for m in vw.mappings if m.message.name == "Gateway_72"}
    assert doors["door_fl_open"] == "ZV_FT_offen"


def test_a_profile_file_by_path(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, MINIMAL))
    assert profile.wire_signals == {"speed"}
    # Without central locking a car can only report its state.
    assert profile.capabilities == (CommandAction.REQUEST_STATE,)


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ('[signals.warp]\nmessage = "TGW_Powertrain"\nsignal = "VehicleSpeed"\n', "unknown wire"),
        ('[signals.fuel]\nmessage = "NoSuchFrame"\nsignal = "FuelLevel"\n', "no message"),
        ('[signals.fuel]\nmessage = "TGW_Energy"\nsignal = "Petrol"\n', "has no signal"),
        ('[signals.locked]\nmessage = "TGW_BodyStatus"\nsignal = "CentralLock"\n', "true_values"),
        (
            '[signals.locked]\nmessage = "TGW_BodyStatus"\nsignal = "CentralLock"\n'
            'true_values = ["Shut"]\n',
            "no value named 'Shut'",
        ),
        ('[signals.lat]\nmessage = "TGW_GNSS_Position"\nsignal = "Latitude"\n', "lat and lon"),
        ('[signals.fuel]\nmessage = "TGW_Energy"\nsignal = "FuelLevel"\nscale = 0\n', "scale"),
        ("[messages]\nTGW_Energy = { period_ms = 100 }\n", "not read by this profile"),
    ],
)
def test_broken_profiles_are_refused(tmp_path: Path, extra: str, complaint: str) -> None:
    with pytest.raises(ProfileError, match=complaint):
        load_profile(_write(tmp_path, MINIMAL + extra))


def test_unknown_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ProfileError, match=r"built in: .*vw_mqb"):
        load_profile("trabant_601")


def test_bad_toml_and_missing_dbc(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(_write(tmp_path, "name = \n", "bad.toml"))
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(_write(tmp_path, MINIMAL.replace("tgw:tgw_generic.dbc", "nope.dbc"), "x.toml"))


def test_frames_sharing_an_id_are_refused(tmp_path: Path) -> None:
    # A DBC next to the profile defining another message on the generic powertrain id.
    (tmp_path / "clash.dbc").write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: X\n\n'
        'BO_ 1474 Clash: 1 X\n SG_ Foo : 0|8@1+ (1,0) [0|255] "" X\n',
        encoding="utf-8",
    )
    text = MINIMAL.replace('"tgw:tgw_generic.dbc"', '"tgw:tgw_generic.dbc", "clash.dbc"') + (
        '[signals.fuel]\nmessage = "Clash"\nsignal = "Foo"\n'
    )
    with pytest.raises(ProfileError, match="share frame id 0x5c2"):
        load_profile(_write(tmp_path, text))
