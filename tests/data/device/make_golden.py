"""Write the decoding golden files: frames encoded straight from each DBC, expected VSS values.

The frames are encoded with cantools from the DBC (not with device_sim's encoder), and the
expected values are written here by hand, so the golden test checks device_sim's decoder
against the DBC and this table, not against itself.

Run it only when a DBC or a case changes, and review the diff of the JSON files:
    .venv/bin/python tests/data/device/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from device_sim.profiles import load_profile

HERE = Path(__file__).parent / "golden"

Frame = tuple[str, dict[str, float], bool]  # message name, values, values are raw (not scaled)


def phys(message: str, **values: float) -> Frame:
    return (message, values, False)


def raw(message: str, **values: float) -> Frame:
    return (message, values, True)


GENERIC_PARKED = [
    phys("TGW_GNSS_Position", Latitude=48.137154, Longitude=11.576124),
    phys("TGW_GNSS_Motion", Heading=270.5, FixType=3, Satellites=9),
    phys("TGW_Powertrain", VehicleSpeed=0, Ignition=0, Immobilized=1),
    phys("TGW_Energy", FuelLevel=63.5, TractionSoC=0, BatteryVoltage=12.61),
    phys("TGW_Odometer", Odometer=12345.6),
    phys("TGW_BodyStatus", CentralLock=1),
]
GENERIC_PARKED_VSS = {
    "Vehicle.CurrentLocation.Latitude": 48.137154,
    "Vehicle.CurrentLocation.Longitude": 11.576124,
    "Vehicle.CurrentLocation.Heading": 270.5,
    "Vehicle.Speed": 0.0,
    "Vehicle.LowVoltageSystemState": False,
    "Vehicle.LowVoltageBattery.CurrentVoltage": 12.61,
    "Vehicle.TraveledDistance": 12345.6,
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
    "Vehicle.Body.Trunk.Rear.IsOpen": False,
    "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": True,
}

CASES: dict[str, list[dict[str, Any]]] = {
    "tgw_generic": [
        {
            "name": "parked and locked",
            "frames": GENERIC_PARKED,
            "expected": {**GENERIC_PARKED_VSS, "Vehicle.Powertrain.FuelSystem.RelativeLevel": 63.5},
            "immobilized": True,
        },
        {
            "name": "driving, unlocked",
            "frames": [
                phys("TGW_GNSS_Position", Latitude=48.15, Longitude=11.58),
                phys("TGW_GNSS_Motion", Heading=90, FixType=3, Satellites=11),
                phys("TGW_Powertrain", VehicleSpeed=48.37, Ignition=2),
                phys("TGW_Energy", FuelLevel=40, BatteryVoltage=14.2),
                phys("TGW_BodyStatus", CentralLock=0),
            ],
            "expected": {
                "Vehicle.CurrentLocation.Latitude": 48.15,
                "Vehicle.CurrentLocation.Longitude": 11.58,
                "Vehicle.CurrentLocation.Heading": 90.0,
                "Vehicle.Speed": 48.37,
                "Vehicle.LowVoltageSystemState": True,
                "Vehicle.Powertrain.FuelSystem.RelativeLevel": 40.0,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 14.2,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": False,
            },
            "immobilized": False,
        },
        {
            "name": "doors and trunk open, engine starting",
            "frames": [
                phys("TGW_BodyStatus", DoorFrontLeft=1, DoorRearRight=1, Trunk=1, CentralLock=0),
                phys("TGW_Powertrain", VehicleSpeed=0, Ignition=3),
            ],
            "expected": {
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": True,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": True,
                "Vehicle.Body.Trunk.Rear.IsOpen": True,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": False,
                "Vehicle.Speed": 0.0,
                "Vehicle.LowVoltageSystemState": True,
            },
            "immobilized": False,
        },
        {
            "name": "values outside their range are flagged, not passed on",
            "frames": [
                raw("TGW_GNSS_Motion", Heading=40000),  # 400.00 deg
                raw("TGW_Powertrain", VehicleSpeed=40000),  # 400 km/h, DBC allows 350
                raw("TGW_BodyStatus", CentralLock=2),  # "Fault": neither locked nor unlocked
                raw("TGW_GNSS_Position", Latitude=1000000000, Longitude=115761240),  # 100 deg N
            ],
            "expected": {
                "Vehicle.LowVoltageSystemState": False,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
                "Vehicle.CurrentLocation.Longitude": 11.576124,
            },
            "out_of_range": [
                {"signal": "heading", "value": 400.0},
                {"signal": "speed", "value": 400.0},
                {"signal": "locked", "value": 2.0},
                {"signal": "lat", "value": 100.0},
            ],
            "immobilized": False,
        },
        {
            "name": "sensor not available is absent, not zero",
            "frames": [
                raw("TGW_Energy", FuelLevel=255, TractionSoC=255, BatteryVoltage=12000),
                raw("TGW_BodyStatus", CentralLock=3),
            ],
            "expected": {
                "Vehicle.LowVoltageBattery.CurrentVoltage": 12.0,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
            },
            "counters": {"invalid": 2},
        },
    ],
    "tgw_generic_ev": [
        {
            "name": "parked and locked, traction battery instead of a tank",
            "frames": GENERIC_PARKED,
            "expected": {
                **GENERIC_PARKED_VSS,
                "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": 0.0,
            },
            "immobilized": True,
        },
        {
            "name": "charge level",
            "frames": [raw("TGW_Energy", FuelLevel=255, TractionSoC=157, BatteryVoltage=12800)],
            "expected": {
                "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": 78.5,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 12.8,
            },
        },
    ],
    "bmw_e8x": [
        {
            "name": "driving (PT-CAN speed, terminal status, battery)",
            "frames": [
                raw("Speed", VehicleSpeed=500, MovingForward=1),  # 500 x 0.103 = 51.5 kph
                raw("TerminalStatus", IgnitionOff=0, AccOn=1),
                raw("PowerBatteryVoltage", BatteryVoltage=14123),
                phys("TGW_GNSS_Position", Latitude=48.1374, Longitude=11.5755),
                phys("TGW_GNSS_Motion", Heading=359.99),
                phys("TGW_Energy", FuelLevel=22.5),
                phys("TGW_Odometer", Odometer=187654.3),
                phys("TGW_BodyStatus", CentralLock=0),
            ],
            "expected": {
                "Vehicle.Speed": 51.5,
                "Vehicle.LowVoltageSystemState": True,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 14.123,
                "Vehicle.CurrentLocation.Latitude": 48.1374,
                "Vehicle.CurrentLocation.Longitude": 11.5755,
                "Vehicle.CurrentLocation.Heading": 359.99,
                "Vehicle.Powertrain.FuelSystem.RelativeLevel": 22.5,
                "Vehicle.TraveledDistance": 187654.3,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": False,
            },
        },
        {
            "name": "parked: ignition off, locked, immobilized",
            "frames": [
                raw("Speed", VehicleSpeed=0),
                raw("TerminalStatus", IgnitionOff=1),
                raw("PowerBatteryVoltage", BatteryVoltage=12480),
                phys("TGW_BodyStatus", CentralLock=1),
                phys("TGW_Powertrain", Immobilized=1),
            ],
            "expected": {
                "Vehicle.Speed": 0.0,
                "Vehicle.LowVoltageSystemState": False,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 12.48,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": True,
            },
            "immobilized": True,
        },
        {
            "name": "out of range: negative speed, battery above 30 V",
            "frames": [
                raw("Speed", VehicleSpeed=-100),  # the signal is signed; the DBC range is 0-255
                raw("PowerBatteryVoltage", BatteryVoltage=40000),
            ],
            "expected": {},
            "out_of_range": [
                {"signal": "speed", "value": -10.3},
                {"signal": "batt_v", "value": 40.0},
            ],
        },
        {
            "name": "frames the profile does not read are ignored and counted",
            "frames": [
                raw("SteeringWheelAngle", SteeringPosition=100),
                raw("EngineData", TEMP_ENG=140),
            ],
            "expected": {},
            "counters": {"unknown": 2},
        },
    ],
    "vw_mqb": [
        {
            "name": "driving (ESP speed, terminal 15, cluster fuel and mileage)",
            "frames": [
                phys("ESP_21", ESP_v_Signal=42.5),
                raw("Klemmen_Status_01", ZAS_Kl_15=1, ZAS_Kl_S=1),
                raw("Kombi_03", KBI_Tankfuellstand_Prozent=55),
                raw("Kombi_02", KBI_Kilometerstand=87654),
                raw("Gateway_72"),
                phys("TGW_Energy", BatteryVoltage=14.05),
                phys("TGW_GNSS_Position", Latitude=48.1351, Longitude=11.582),
                phys("TGW_GNSS_Motion", Heading=12.34),
                phys("TGW_BodyStatus", CentralLock=0),
            ],
            "expected": {
                "Vehicle.Speed": 42.5,
                "Vehicle.LowVoltageSystemState": True,
                "Vehicle.Powertrain.FuelSystem.RelativeLevel": 55.0,
                "Vehicle.TraveledDistance": 87654.0,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": False,
                "Vehicle.Body.Trunk.Rear.IsOpen": False,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 14.05,
                "Vehicle.CurrentLocation.Latitude": 48.1351,
                "Vehicle.CurrentLocation.Longitude": 11.582,
                "Vehicle.CurrentLocation.Heading": 12.34,
                "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": False,
            },
        },
        {
            "name": "doors: driver, rear passenger side and tailgate open",
            "frames": [
                raw("Gateway_72", ZV_FT_offen=1, ZV_HBFS_offen=1, ZV_HD_offen=1),
                raw("Klemmen_Status_01", ZAS_Kl_15=0),
            ],
            "expected": {
                "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": True,
                "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": False,
                "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": True,
                "Vehicle.Body.Trunk.Rear.IsOpen": True,
                "Vehicle.LowVoltageSystemState": False,
            },
        },
        {
            "name": "fuel sender initialising or faulty: absent; above 100 %: flagged",
            "frames": [
                raw("Kombi_03", KBI_Tankfuellstand_Prozent=126),
                raw("Kombi_03", KBI_Tankfuellstand_Prozent=127),
                raw("Kombi_03", KBI_Tankfuellstand_Prozent=110),
                raw("ESP_21", ESP_v_Signal=50000),  # 500 km/h: the DBC allows it, VSS does not
            ],
            "expected": {},
            "out_of_range": [
                {"signal": "fuel", "value": 110.0},
                {"signal": "speed", "value": 500.0},
            ],
            "counters": {"invalid": 2},
        },
        {
            "name": "garbage: short payload, remote frame, unknown id",
            "frames": [
                {"id": 0x6B7, "data": "3a30", "extended": False},
                {"id": 0x3C0, "data": "", "extended": False, "remote": True},
                {"id": 0x7FF, "data": "0102030405060708", "extended": False},
                {"id": 0x18DAF110, "data": "0102", "extended": True},
            ],
            "expected": {},
            "counters": {"malformed": 2, "unknown": 2},
        },
    ],
}


def encode(profile_name: str, frame: Frame | dict[str, Any]) -> dict[str, Any]:
    if isinstance(frame, dict):
        return frame
    name, values, is_raw = frame
    profile = load_profile(profile_name)
    message = next(m for m in profile.dbc_messages.values() if m.name == name)
    full = {s.name: 0 for s in message.signals} | values
    data = message.encode(full, scaling=not is_raw, strict=False)
    return {"id": message.frame_id, "data": data.hex(), "extended": bool(message.is_extended_frame)}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for profile_name, cases in CASES.items():
        document = {
            "profile": profile_name,
            "about": "Frames encoded from the DBC with cantools; expected VSS values by hand "
            "(tests/data/device/make_golden.py).",
            "cases": [
                {**case, "frames": [encode(profile_name, f) for f in case["frames"]]}
                for case in cases
            ],
        }
        path = HERE / f"{profile_name}.json"
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    log = HERE.parent / "logs" / "vw_mqb_trip.log"
    log.parent.mkdir(exist_ok=True)
    write_trip_log(log)
    print(f"wrote {log}")


def write_trip_log(path: Path) -> None:
    """A candump log of a VW MQB rental: unlock, door, ignition, drive, stop (for replay tests)."""
    import can  # noqa: PLC0415

    from device_sim.codec import FrameEncoder  # noqa: PLC0415
    from device_sim.ecu import VehicleState  # noqa: PLC0415

    profile = load_profile("vw_mqb")
    encoder = FrameEncoder(profile)
    state = VehicleState(fuel=41.0, odometer=52_310.0)
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    script: dict[int, dict[str, object]] = {
        20: {"locked": False},
        30: {"door_fl_open": True},
        50: {"door_fl_open": False},
        60: {"ignition": True, "batt_v": 14.1},
    }
    with can.CanutilsLogWriter(path, channel="can0") as writer:
        for tick in range(200):  # 100 ms ticks: 20 s
            for name, value in script.get(tick, {}).items():
                setattr(state, name, value)
            if tick >= 70:
                state.speed = min(40.0, (tick - 70) * 1.0)
                state.lat += 0.00001
                state.heading = 0.0
            for message in encoder.messages:
                period = profile.period_ms(message) // 100 or 1
                if tick % period == 0:
                    frame = encoder.encode(message, state.wire_values(), immobilized=False)
                    frame.timestamp = start + tick / 10
                    frame.channel = "can0"
                    writer.on_message_received(frame)
            if tick % 10 == 5:  # a frame the profile does not read (steering angle)
                writer.on_message_received(
                    can.Message(
                        timestamp=start + tick / 10,
                        arbitration_id=0x86,
                        data=bytes(8),
                        channel="can0",
                    )
                )


if __name__ == "__main__":
    main()
