"""The unit on a real SocketCAN interface (vcan0), when the machine has one.

Set one up with: modprobe vcan && ip link add dev vcan0 type vcan && ip link set vcan0 up
(containers without the vcan module skip this test; the virtual-bus tests cover the logic).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from device_sim.canbus import PythonCanBus
from device_sim.codec import FrameDecoder
from device_sim.ecu import SimulatedEcus, VehicleState
from device_sim.profiles import load_profile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/sys/class/net/vcan0").exists(), reason="no vcan0 SocketCAN interface here"
    ),
]


async def test_frames_cross_a_socketcan_bus() -> None:
    profile = load_profile("vw_mqb")
    decoder = FrameDecoder(profile)
    seen: asyncio.Queue[dict[str, float | bool]] = asyncio.Queue()

    def listen(frame: object) -> None:
        decoded = decoder.decode(frame)  # type: ignore[arg-type]
        if decoded is not None and decoded.values:
            seen.put_nowait(decoded.values)

    async with (
        PythonCanBus("socketcan", "vcan0") as ecu_bus,
        PythonCanBus("socketcan", "vcan0") as unit_bus,
    ):
        unit_bus.add_listener(listen)
        ecus = SimulatedEcus(profile, VehicleState(door_fl_open=True), ecu_bus)
        ecus.send_all()
        values: dict[str, float | bool] = {}
        async with asyncio.timeout(5):
            while "door_fl_open" not in values:
                values.update(await seen.get())
        assert values["door_fl_open"] is True
        ecus.close()
